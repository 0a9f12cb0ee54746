"""The supernode's HTTP API: parse each request into a protocol type, call the service.

    POST   /api/v1/peers                     register (or re-register) a peer
    POST   /api/v1/peers/{peer}/heartbeat    keep alive; 404 UNKNOWN_PEER: register again
    DELETE /api/v1/peers/{peer}              leave
    POST   /api/v1/tasks                     open a task (waits for the upstream's answer)
    POST   /api/v1/tasks/{task}/sync         report pieces, get assignments (long poll)
    GET    /api/v1/tasks/{task}              task status
    GET    /pieces/{task}/{piece}            the seed's piece server
    GET    /healthz, /metrics

Errors are JSON ``{"error": {"code", "message"}}`` with a 4xx status for bad input and
502 when the upstream failed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from supernode.replication import NotOwner, RedisUnavailable
from supernode.scheduler import UnknownPeer, UnknownTask
from supernode.seed_task import ShuttingDown, TaskFailed
from supernode.service import SupernodeService
from swarmpull.core.protocol import (
    API,
    ProtocolError,
    parse_heartbeat,
    parse_open_task,
    parse_peer_id,
    parse_peer_registration,
    parse_sync_request,
)
from swarmpull.core.tasks import validate_task_id
from swarmpull.edges.http import json_error, read_json

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure answers JSON with a code a client can act on."""
    try:
        return await handler(request)
    except ProtocolError as exc:
        return json_error(exc.status, "BAD_REQUEST" if exc.status == 400 else "TOO_LARGE", str(exc))
    except UnknownPeer as exc:
        return json_error(404, "UNKNOWN_PEER", f"peer {exc.args[0]} is not registered")
    except UnknownTask as exc:
        return json_error(404, "UNKNOWN_TASK", f"task {exc.args[0]} is not known here")
    except NotOwner as exc:
        return json_error(421, "NOT_OWNER", str(exc), owner=exc.owner)
    except RedisUnavailable as exc:
        return json_error(503, "REDIS_UNAVAILABLE", str(exc), {"Retry-After": "1"})
    except ShuttingDown:
        return json_error(503, "SHUTTING_DOWN", "this supernode is stopping", {"Retry-After": "1"})
    except TaskFailed as exc:
        return json_error(502, "UPSTREAM_ERROR", str(exc), _status_header(exc.status), direct=exc.direct)
    except web.HTTPException as exc:
        if exc.status >= 400 and not exc.content_type.endswith("json"):
            return json_error(exc.status, "NOT_FOUND" if exc.status == 404 else "BAD_REQUEST", exc.reason)
        raise


def _status_header(status: int | None) -> dict[str, str]:
    return {"X-Upstream-Status": str(status)} if status else {}


class SupernodeApi:
    def __init__(self, service: SupernodeService) -> None:
        self._service = service

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(f"{API}/peers", self.register),
            web.post(f"{API}/peers/{{peer}}/heartbeat", self.heartbeat),
            web.delete(f"{API}/peers/{{peer}}", self.leave),
            web.post(f"{API}/tasks", self.open_task),
            web.post(f"{API}/tasks/{{task}}/sync", self.sync),
            web.get(f"{API}/tasks/{{task}}", self.status),
            web.get("/healthz", self.health),
        ]

    async def register(self, request: web.Request) -> web.Response:
        reg = parse_peer_registration(await read_json(request))
        await self._service.register_peer(reg)
        return web.json_response({"heartbeat_interval": self._service.config.heartbeat_interval})

    async def heartbeat(self, request: web.Request) -> web.Response:
        peer_id = parse_peer_id(request.match_info["peer"])
        beat = parse_heartbeat(await read_json(request) if request.can_read_body else {})
        await self._service.heartbeat(peer_id, beat)
        return web.json_response({})

    async def leave(self, request: web.Request) -> web.Response:
        self._service.leave(parse_peer_id(request.match_info["peer"]))
        return web.Response(status=204)

    async def open_task(self, request: web.Request) -> web.Response:
        req = parse_open_task(await read_json(request))
        info = await self._service.open_task(req)
        return web.json_response(info.to_json())

    async def sync(self, request: web.Request) -> web.Response:
        task_id = _task_id(request)
        req = parse_sync_request(await read_json(request))
        resp = await self._service.sync(task_id, req)
        return web.json_response(resp.to_json())

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self._service.status(_task_id(request)))

    async def health(self, _: web.Request) -> web.Response:
        """200 when this supernode can serve; 503 when its Redis (with replicas) is down."""
        body: dict[str, object] = {"status": "ok", "tasks": len(self._service.tasks)}
        replication = self._service.replication
        if replication is not None:
            up = await replication.ping()
            body.update(status="ok" if up else "degraded", redis="ok" if up else "unreachable")
            return web.json_response(body, status=200 if up else 503)
        return web.json_response(body)


def _task_id(request: web.Request) -> str:
    try:
        return validate_task_id(request.match_info["task"])
    except ValueError as exc:
        raise ProtocolError(str(exc)) from None
