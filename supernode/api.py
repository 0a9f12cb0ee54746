"""The supernode's HTTP API: parse each request into a protocol type, call the service.

    POST   /api/v1/peers                     register (or re-register) a peer
    POST   /api/v1/peers/{peer}/report       report on every task it downloads (or none:
                                             a heartbeat); 404 UNKNOWN_PEER: register again
    DELETE /api/v1/peers/{peer}              leave
    POST   /api/v1/tasks                     open tasks (waits for each upstream's answer)
    GET    /api/v1/peers/{peer}/channel      the same calls over one WebSocket (``channel``):
                                             what peers use, a third of the cost per call
    POST   /api/v1/registry/manifest         a manifest by tag or digest, from what the
                                             cluster holds (``registry_mirror``)
    POST   /api/v1/registry/blob             a blob's descriptor, likewise
    GET    /api/v1/tasks/{task}              task status
    GET    /pieces/{task}/map, /pieces/{task}/{piece}   the seed's piece server
    GET    /healthz                          200 while the process serves (liveness); the
                                             body says whether Redis answers
    GET    /readyz                           200 when calls can be served: started, not
                                             stopping, Redis reachable (replicas); else 503
    GET    /metrics
    GET    /api/v1/openapi.json              these routes as an OpenAPI document

With mutual TLS (``--tls-dir``) every route but ``/healthz``, ``/readyz``, the tracker and
the dashboard needs a cluster certificate (the server's ``identity_middleware``), and a
call made in a peer's name (register, report, leave, open, the channel) only that
peer's own certificate (``CallerGate.acting_for``): 403 otherwise.

Errors are JSON ``{"error": {"code", "message"}}`` with a 4xx status for bad input and
502 when the upstream failed. A batch answers each of its items on its own: an item's
error is in its place, the others are served.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from supernode.channel import ControlChannel
from supernode.errors import KNOWN, error_of
from supernode.registry_mirror import RegistryMirror
from supernode.service import SupernodeService
from swarmpull.core.fields import ProtocolError, parse_peer_id
from swarmpull.core.protocol import API, parse_open_tasks, parse_peer_registration, parse_peer_report
from swarmpull.core.registry_questions import descriptor_json, parse_blob_question, parse_manifest_question
from swarmpull.core.tasks import validate_task_id
from swarmpull.edges.http import json_error, read_json
from swarmpull.edges.tls import OPEN, CallerGate

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure answers JSON with a code a client can act on."""
    try:
        return await handler(request)
    except KNOWN as exc:
        status, body, headers = error_of(exc)
        return web.json_response(body, status=status, headers=headers)
    except web.HTTPException as exc:
        if exc.status >= 400 and not exc.content_type.endswith("json"):
            return json_error(exc.status, "NOT_FOUND" if exc.status == 404 else "BAD_REQUEST", exc.reason)
        raise


class SupernodeApi:
    def __init__(self, service: SupernodeService, mirror: RegistryMirror, gate: CallerGate = OPEN) -> None:
        self._service = service
        self._mirror = mirror
        self._gate = gate
        self._calls = {k: service.metrics.calls.labels(k) for k in ("register", "report", "open")}

    def routes(self) -> list[web.RouteDef]:
        channel = ControlChannel(self, self._service.config.channel_ping, self._gate)
        return [
            web.post(f"{API}/peers", self.register),
            web.post(f"{API}/peers/{{peer}}/report", self.report),
            web.delete(f"{API}/peers/{{peer}}", self.leave),
            web.post(f"{API}/tasks", self.open_tasks),
            web.post(f"{API}/registry/manifest", self.manifest),
            web.post(f"{API}/registry/blob", self.blob),
            web.get(f"{API}/tasks/{{task}}", self.status),
            web.get(f"{API}/peers/{{peer}}/channel", channel.handle),
            web.get("/healthz", self.health),
            web.get("/readyz", self.readiness),
        ]

    # The operations: the REST routes and the control channel (``channel``) both call them.

    def op_leave(self, peer_id: str) -> None:
        self._service.presence.leave(peer_id)

    def connected(self, peer_id: str, delta: int) -> None:
        self._service.presence.connected(peer_id, delta)

    async def op_register(self, body: Any, peer_id: str | None, source: str | None) -> dict[str, Any]:
        """``source``: the IP the registration came from (``--node-addresses source``)."""
        reg = parse_peer_registration(body)
        if peer_id is not None and reg.peer_id != peer_id:
            raise ProtocolError(f"this channel is peer {peer_id}'s, not {reg.peer_id}'s")
        await self._service.register_peer(reg, source)
        self._calls["register"].inc()
        return {"heartbeat_interval": self._service.presence.heartbeat_interval()}

    async def op_report(self, peer_id: str, body: Any) -> dict[str, Any]:
        answers = await self._service.reports.report(peer_id, parse_peer_report(body))
        self._calls["report"].inc()
        out = {}
        for task_id, answer in answers.items():
            out[task_id] = error_of(answer)[1] if isinstance(answer, Exception) else answer.to_json()
        return {"tasks": out, "heartbeat_interval": self._service.presence.heartbeat_interval()}

    async def op_open(self, body: Any, peer_id: str | None = None) -> dict[str, Any]:
        batch = parse_open_tasks(body)
        if peer_id is not None and batch.peer_id != peer_id:
            raise ProtocolError(f"this channel is peer {peer_id}'s, not {batch.peer_id}'s")
        results = await self._service.opening.open_tasks(batch.peer_id, batch.tasks)
        self._calls["open"].inc()
        return {"tasks": [error_of(r)[1] if isinstance(r, Exception) else r.to_json() for r in results]}

    async def op_manifest(self, body: Any) -> dict[str, Any]:
        return (await self._mirror.manifest(parse_manifest_question(body))).to_json()

    async def op_blob(self, body: Any) -> dict[str, Any]:
        return descriptor_json(await self._mirror.blob(parse_blob_question(body)))

    # The REST routes.

    def _acting(self, request: web.Request, body: Any) -> str | None:
        """The peer a body acts for (its ``peer_id``), once the caller proved to be it;
        None when nobody can prove anything (no mutual TLS)."""
        if not self._gate.mutual:
            return None
        named = body.get("peer_id") if isinstance(body, dict) else None
        peer_id = parse_peer_id(named if isinstance(named, str) else "")
        self._gate.acting_for(request, peer_id)
        return peer_id

    async def register(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        return web.json_response(await self.op_register(body, self._acting(request, body), request.remote))

    async def report(self, request: web.Request) -> web.Response:
        peer_id = parse_peer_id(request.match_info["peer"])
        self._gate.acting_for(request, peer_id)
        body = await read_json(request) if request.can_read_body else {}
        return web.json_response(await self.op_report(peer_id, body))

    async def leave(self, request: web.Request) -> web.Response:
        peer_id = parse_peer_id(request.match_info["peer"])
        self._gate.acting_for(request, peer_id)
        self._service.presence.leave(peer_id)
        return web.Response(status=204)

    async def open_tasks(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        return web.json_response(await self.op_open(body, self._acting(request, body)))

    async def manifest(self, request: web.Request) -> web.Response:
        return web.json_response(await self.op_manifest(await read_json(request)))

    async def blob(self, request: web.Request) -> web.Response:
        return web.json_response(await self.op_blob(await read_json(request)))

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self._service.status(_task_id(request)))

    async def health(self, _: web.Request) -> web.Response:
        """Liveness: 200 while the process answers, even with Redis down (restarting a
        replica would not bring Redis back); the body says what is degraded."""
        body: dict[str, object] = {"status": "ok", "tasks": len(self._service.tasks)}
        if self._service.cluster.shared:
            up = await self._service.cluster.ping()
            body.update(status="ok" if up else "degraded", redis="ok" if up else "unreachable")
        return web.json_response(body)

    async def readiness(self, _: web.Request) -> web.Response:
        """Readiness: 200 when this replica can serve calls; 503 while it starts or stops
        and while its shared state (Redis) is unreachable, so peers are sent elsewhere."""
        service = self._service
        if not service.accepting:
            return web.json_response({"status": "starting or stopping"}, status=503)
        if service.cluster.shared and not await service.cluster.ping():
            return web.json_response({"status": "redis unreachable", "redis": "unreachable"}, status=503)
        return web.json_response({"status": "ready"})


def _task_id(request: web.Request) -> str:
    try:
        return validate_task_id(request.match_info["task"])
    except ValueError as exc:
        raise ProtocolError(str(exc)) from None
