"""The supernode's HTTP API: parse each request into a protocol type, call the service.

    POST   /api/v1/peers                     register (or re-register) a peer
    POST   /api/v1/peers/{peer}/report       report on every task it downloads (or none:
                                             a heartbeat); 404 UNKNOWN_PEER: register again
    DELETE /api/v1/peers/{peer}              leave
    POST   /api/v1/tasks                     open tasks (waits for each upstream's answer)
    GET    /api/v1/tasks/{task}              task status
    GET    /pieces/{task}/map, /pieces/{task}/{piece}   the seed's piece server
    GET    /healthz, /metrics
    GET    /api/v1/openapi.json              these routes as an OpenAPI document

Errors are JSON ``{"error": {"code", "message"}}`` with a 4xx status for bad input and
502 when the upstream failed. A batch answers each of its items on its own: an item's
error is in its place, the others are served.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from supernode.cluster import ClusterUnavailable, NotOwner
from supernode.scheduler import UnknownPeer, UnknownTask
from supernode.seed_task import ShuttingDown, TaskFailed
from supernode.service import SupernodeService
from swarmpull.core.protocol import (
    API,
    ProtocolError,
    error_body,
    parse_open_tasks,
    parse_peer_id,
    parse_peer_registration,
    parse_peer_report,
)
from swarmpull.core.tasks import validate_task_id
from swarmpull.edges.http import json_error, read_json

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_of(exc: Exception) -> tuple[int, dict[str, Any], dict[str, str]]:
    """``(status, body, headers)`` for an error the service raised."""
    if isinstance(exc, ProtocolError):
        code = "BAD_REQUEST" if exc.status == 400 else "TOO_LARGE"
        return exc.status, error_body(code, str(exc)), {}
    if isinstance(exc, UnknownPeer):
        return 404, error_body("UNKNOWN_PEER", f"peer {exc.args[0]} is not registered"), {}
    if isinstance(exc, UnknownTask):
        return 404, error_body("UNKNOWN_TASK", f"task {exc.args[0]} is not known here"), {}
    if isinstance(exc, NotOwner):
        return 421, error_body("NOT_OWNER", str(exc), owner=exc.owner), {}
    if isinstance(exc, ClusterUnavailable):
        return 503, error_body("CLUSTER_UNAVAILABLE", str(exc)), {"Retry-After": "1"}
    if isinstance(exc, ShuttingDown):
        return 503, error_body("SHUTTING_DOWN", "this supernode is stopping"), {"Retry-After": "1"}
    if isinstance(exc, TaskFailed):
        headers = {"X-Upstream-Status": str(exc.status)} if exc.status else {}
        body = error_body("UPSTREAM_ERROR", str(exc), direct=exc.direct, upstream_status=exc.status)
        return 502, body, headers
    raise exc


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure answers JSON with a code a client can act on."""
    try:
        return await handler(request)
    except (
        ProtocolError,
        UnknownPeer,
        UnknownTask,
        NotOwner,
        ClusterUnavailable,
        ShuttingDown,
        TaskFailed,
    ) as exc:
        status, body, headers = error_of(exc)
        return web.json_response(body, status=status, headers=headers)
    except web.HTTPException as exc:
        if exc.status >= 400 and not exc.content_type.endswith("json"):
            return json_error(exc.status, "NOT_FOUND" if exc.status == 404 else "BAD_REQUEST", exc.reason)
        raise


class SupernodeApi:
    def __init__(self, service: SupernodeService) -> None:
        self._service = service

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(f"{API}/peers", self.register),
            web.post(f"{API}/peers/{{peer}}/report", self.report),
            web.delete(f"{API}/peers/{{peer}}", self.leave),
            web.post(f"{API}/tasks", self.open_tasks),
            web.get(f"{API}/tasks/{{task}}", self.status),
            web.get("/healthz", self.health),
        ]

    async def register(self, request: web.Request) -> web.Response:
        reg = parse_peer_registration(await read_json(request))
        await self._service.register_peer(reg)
        self._service.metrics.calls.labels("register").inc()
        return web.json_response({"heartbeat_interval": self._service.config.heartbeat_interval})

    async def report(self, request: web.Request) -> web.Response:
        peer_id = parse_peer_id(request.match_info["peer"])
        report = parse_peer_report(await read_json(request) if request.can_read_body else {})
        answers = await self._service.report(peer_id, report)
        self._service.metrics.calls.labels("report").inc()
        body = {}
        for task_id, answer in answers.items():
            body[task_id] = error_of(answer)[1] if isinstance(answer, Exception) else answer.to_json()
        return web.json_response(
            {"tasks": body, "heartbeat_interval": self._service.config.heartbeat_interval}
        )

    async def leave(self, request: web.Request) -> web.Response:
        self._service.leave(parse_peer_id(request.match_info["peer"]))
        return web.Response(status=204)

    async def open_tasks(self, request: web.Request) -> web.Response:
        batch = parse_open_tasks(await read_json(request))
        results = await self._service.open_tasks(batch.peer_id, batch.tasks)
        self._service.metrics.calls.labels("open").inc()
        return web.json_response(
            {"tasks": [error_of(r)[1] if isinstance(r, Exception) else r.to_json() for r in results]}
        )

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self._service.status(_task_id(request)))

    async def health(self, _: web.Request) -> web.Response:
        """200 when this supernode can serve; 503 when its shared state (replicas) is down."""
        body: dict[str, object] = {"status": "ok", "tasks": len(self._service.tasks)}
        cluster = self._service.cluster
        if cluster.shared:
            up = await cluster.ping()
            body.update(status="ok" if up else "degraded", redis="ok" if up else "unreachable")
            return web.json_response(body, status=200 if up else 503)
        return web.json_response(body)


def _task_id(request: web.Request) -> str:
    try:
        return validate_task_id(request.match_info["task"])
    except ValueError as exc:
        raise ProtocolError(str(exc)) from None
