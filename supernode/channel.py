"""A peer's control calls over one WebSocket: ``GET /api/v1/peers/{peer}/channel``.

The same operations as the REST routes (register, open, report, leave), parsed by the
same functions and answered with the same bodies, as JSON messages on a connection the
peer keeps open: ``{"id": N, "op": "report", "body": {...}}`` is answered by
``{"id": N, "body": {...}}`` or ``{"id": N, "error": {"code", "message"}}``. A message
costs the supernode about a third of an HTTP request (no request to parse and route, no
response to build around it), and an open connection is the peer's heartbeat: a
connected peer needs no heartbeat calls. The connection is pinged every
``channel_ping`` seconds (a peer that answers no ping within half that is disconnected,
and heartbeats again): rarely, as a ping costs the supernode as much as a call. Opens and the
registry questions (``manifest``, ``blob``) may wait for an upstream's answer, so they are
answered out of order; everything else in order. Messages are never compressed: a peer
that offers permessage-deflate (ours do not) is not given it, so no client can make the
supernode deflate every answer, and no answer mixes a capability with bytes a peer chose
under one compressor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any, Protocol

from aiohttp import WSCloseCode, WSMsgType, web

from supernode.errors import KNOWN, error_of
from swarmpull.core.fields import ProtocolError, parse_peer_id
from swarmpull.core.protocol import error_body
from swarmpull.edges.http import MAX_JSON_BODY, parse_json
from swarmpull.edges.tls import OPEN, CallerGate

log = logging.getLogger(__name__)

MAX_OPENS = 64  # opens and registry questions a channel may have waiting at once
WAITING_OPS = ("open", "manifest", "blob")  # answered out of order: they may wait on an upstream


class Operations(Protocol):
    """What the channel calls: the API's operations, and the peer's presence."""

    def op_register(self, body: Any, peer_id: str | None, source: str | None) -> Awaitable[dict[str, Any]]:
        """``source``: the IP the registration came from."""

    def op_report(self, peer_id: str, body: Any) -> Awaitable[dict[str, Any]]: ...
    def op_open(self, body: Any, peer_id: str | None = None) -> Awaitable[dict[str, Any]]: ...
    def op_manifest(self, body: Any) -> Awaitable[dict[str, Any]]: ...
    def op_blob(self, body: Any) -> Awaitable[dict[str, Any]]: ...
    def op_leave(self, peer_id: str) -> None: ...
    def connected(self, peer_id: str, delta: int) -> None: ...


class ControlChannel:
    def __init__(self, ops: Operations, ping_interval: float, gate: CallerGate = OPEN) -> None:
        self._ops = ops
        self._ping = ping_interval
        self._gate = gate
        self._channels: dict[str, web.WebSocketResponse] = {}  # peer -> its one channel

    async def handle(self, request: web.Request) -> web.StreamResponse:
        peer_id = parse_peer_id(request.match_info["peer"])
        # The channel is the path's peer's: with mutual TLS, only its certificate opens it
        # (a 403 before the upgrade), and every op on it is checked against that peer.
        self._gate.acting_for(request, peer_id)
        ops = self._ops
        ws = web.WebSocketResponse(heartbeat=self._ping, max_msg_size=MAX_JSON_BODY, compress=False)
        await ws.prepare(request)
        # One channel per peer: a newer one replaces it (a peer that reconnects), so no
        # peer holds more than one of the listener's connections this way.
        older, self._channels[peer_id] = self._channels.get(peer_id), ws
        if older is not None:
            await older.close(code=WSCloseCode.POLICY_VIOLATION, message=b"replaced by a newer channel")
        opens: set[asyncio.Task[None]] = set()
        ops.connected(peer_id, +1)
        try:
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    await ws.close(code=1003, message=b"text frames only")
                    break
                ident = None
                try:
                    message = parse_json(msg.data.encode())
                    if not isinstance(message, dict) or type(message.get("id")) is not int:  # not a bool
                        raise ProtocolError('a message is {"id": N, "op": ..., "body": ...}')
                    ident, op, body = message["id"], message.get("op"), message.get("body")
                    if op in WAITING_OPS:
                        if len(opens) >= MAX_OPENS:
                            raise ProtocolError(f"at most {MAX_OPENS} opens may wait at once")
                        task = asyncio.create_task(self._answer(ws, ident, _waiting(ops, op, body, peer_id)))
                        opens.add(task)
                        task.add_done_callback(opens.discard)
                        continue
                    if op == "report":
                        answer = await ops.op_report(peer_id, body)
                    elif op == "register":
                        answer = await ops.op_register(body, peer_id, request.remote)
                    elif op == "leave":
                        ops.op_leave(peer_id)
                        answer = {}
                    else:
                        raise ProtocolError(
                            f"unknown op {op!r}: register, open, report, leave, manifest or blob"
                        )
                    await ws.send_json({"id": ident, "body": answer})
                except KNOWN as exc:
                    await ws.send_json({"id": ident, **error_of(exc)[1]})
                except Exception:
                    log.exception("channel of %s: a call failed", peer_id)
                    await ws.send_json({"id": ident, **error_body("INTERNAL", "the call failed")})
        finally:
            if self._channels.get(peer_id) is ws:
                del self._channels[peer_id]
            ops.connected(peer_id, -1)
            for task in opens:
                task.cancel()
            await asyncio.gather(*opens, return_exceptions=True)
        return ws

    async def _answer(self, ws: web.WebSocketResponse, ident: int, call: Awaitable[dict[str, Any]]) -> None:
        try:
            reply = {"id": ident, "body": await call}
        except KNOWN as exc:
            reply = {"id": ident, **error_of(exc)[1]}
        except Exception:
            log.exception("channel: a call failed")
            reply = {"id": ident, **error_body("INTERNAL", "the call failed")}
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_json(reply)


def _waiting(ops: Operations, op: str, body: Any, peer_id: str) -> Awaitable[dict[str, Any]]:
    """The call for an op of ``WAITING_OPS``."""
    if op == "manifest":
        return ops.op_manifest(body)
    if op == "blob":
        return ops.op_blob(body)
    return ops.op_open(body, peer_id)
