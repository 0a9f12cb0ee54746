"""Byzantine nodes for fault runs of the load test: a front that stands where an honest
node's piece server is advertised and twists its answers, in one of six ways.

The product never lies, so the lies live here, in the load test only. A byzantine node is
a real node daemon whose piece server other nodes reach only through this front (the node
advertises the front's address; the supernode and every requester know no other). The
front asks the real server (uncompressed) and then, by mode:

- ``wrong``: sends every piece at its full length with one byte flipped;
- ``truncate``: promises every piece's full length, sends half and cuts the connection;
- ``slow``: sends every piece at a crawl (``SLOW_RATE``), a little at a time so that no
  stall timeout fires: only a deadline on the whole transfer catches it;
- ``liar``: its maps, and the map header of every piece it sends, claim every piece; a
  piece the node does not hold is promised (200, its full length) and never sent, the
  connection held until the requester gives up;
- ``refuse``: its maps are true, and every piece is refused as if its upload slots were
  all busy (429), the supernode's checks included: a holder that never serves and is
  never caught lying;
- ``absent``: its maps are true, and every piece is answered "not held here" (404).

Piece statements (each piece's sha256, signed by the supernode) pass unchanged: no front
can forge them, and requesters check every one. Everything else passes as it is.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import socket
from collections import Counter
from collections.abc import Callable

import aiohttp
from aiohttp import web
from yarl import URL

from loadtest.services import free_port
from peer.config import PeerConfig
from swarmpull.app.node import NodeDaemon
from swarmpull.core.bitfield import full, to_text
from swarmpull.core.capability import CAPABILITY_HEADER
from swarmpull.core.geometry import PieceGeometry
from swarmpull.core.maps import MapError, PieceMap, decode_map
from swarmpull.edges.http import PEER_HEADER, HostPort, bind, json_error, start_site
from swarmpull.edges.transport import MAP_HEADER

MODES = ("wrong", "truncate", "slow", "liar", "refuse", "absent")
SLOW_RATE = 1000  # bytes per second a slow front sends a piece at
SLOW_STEP = 0.5  # seconds between two of its writes (far below any stall timeout)
HOLD = 300.0  # seconds a liar holds a promised piece at most (requesters give up long before)
_PASSED_HEADERS = ("Content-Type", "Retry-After", MAP_HEADER)


class ByzantineFront:
    """``await start()`` on a socket from ``swarmpull.edges.http.bind`` (its URL is what
    the node advertises), in front of the real piece server at ``target``; ``stop()``.
    ``geometry`` gives the pieces of a blob the node holds or is fetching (the liar
    promises pieces by their length)."""

    def __init__(
        self,
        mode: str,
        target: str,
        geometry: Callable[[str], PieceGeometry | None],
        rng: random.Random | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"byzantine mode is one of {', '.join(MODES)}")
        self.mode = mode
        self._target = target.rstrip("/")
        self._geometry = geometry
        self._rng = rng or random.Random()
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.lies: Counter[str] = Counter()  # answers twisted, by kind

    def __repr__(self) -> str:
        return f"<ByzantineFront {self.mode} -> {self._target} lies={sum(self.lies.values())}>"

    async def start(self, sock: socket.socket) -> None:
        self._session = aiohttp.ClientSession(
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=60),
        )
        app = web.Application()
        app.router.add_get("/pieces/{task_id}/map", self._map)
        app.router.add_get("/pieces/{task_id}/{piece}", self._piece)
        # A requester that hangs up ends our handler (a stalled or crawling piece) at once.
        self._runner, _ = await start_site(app, sock, handler_cancellation=True)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _ask(self, request: web.Request) -> tuple[int, dict[str, str], bytes]:
        """The real server's answer to the same request, uncompressed."""
        assert self._session is not None
        headers = {"Accept-Encoding": "identity"}
        for name in (PEER_HEADER, CAPABILITY_HEADER):  # without the capability: 403, no lie
            if name in request.headers:
                headers[name] = request.headers[name]
        async with self._session.get(self._target + request.path_qs, headers=headers) as resp:
            body = await resp.read()
            kept = {k: resp.headers[k] for k in _PASSED_HEADERS if k in resp.headers}
            return resp.status, kept, body

    async def _map(self, request: web.Request) -> web.StreamResponse:
        status, headers, body = await self._ask(request)
        if self.mode == "liar" and status == 200:
            try:
                count = int.from_bytes(body[4:8], "big")
                real = decode_map(body, count)
            except MapError:
                pass
            else:
                body = PieceMap(count, count, full(count), real.statements).encode()
                self.lies["map"] += 1
        return web.Response(status=status, headers=headers, body=body)

    async def _piece(self, request: web.Request) -> web.StreamResponse:
        if self.mode in ("refuse", "absent"):
            self.lies["refused piece"] += 1
            if self.mode == "absent":
                return json_error(404, "NOT_FOUND", "piece is not held here")
            return json_error(429, "BUSY", "every upload slot is busy", {"Retry-After": "1"})
        status, headers, body = await self._ask(request)
        task_id, piece = request.match_info["task_id"], request.match_info["piece"]
        if status == 404 and self.mode == "liar":
            geometry = self._geometry(task_id)
            if geometry is not None and piece.isdigit() and int(piece) < geometry.count:
                return await self._promise(request, geometry.length(int(piece)))
        if status != 200:
            return web.Response(status=status, headers=headers, body=body)
        if self.mode == "liar":
            geometry = self._geometry(task_id)
            if geometry is not None:
                headers[MAP_HEADER] = to_text(full(geometry.count), geometry.count)
            return web.Response(headers=headers, body=body)
        try:
            return await self._twist(request, headers, body)
        except ConnectionResetError:  # the requester gave up first (its deadline): no error
            return web.Response(status=499)

    async def _twist(self, request: web.Request, headers: dict[str, str], body: bytes) -> web.StreamResponse:
        resp = web.StreamResponse(headers=headers)
        resp.content_length = len(body)
        await resp.prepare(request)
        if self.mode == "wrong":
            flipped = bytearray(body)
            if flipped:
                flipped[self._rng.randrange(len(flipped))] ^= 0xFF
            self.lies["wrong piece"] += 1
            await resp.write(bytes(flipped))
        elif self.mode == "truncate":
            self.lies["truncated piece"] += 1
            await resp.write(body[: len(body) // 2])
            await asyncio.sleep(0.05)  # let the half reach the requester, then cut
            if request.transport is not None:
                request.transport.abort()
            return resp
        else:  # slow
            self.lies["slow piece"] += 1
            step = max(1, int(SLOW_RATE * SLOW_STEP))
            for start in range(0, len(body), step):
                await resp.write(body[start : start + step])
                await asyncio.sleep(SLOW_STEP)
        await resp.write_eof()
        return resp

    async def _promise(self, request: web.Request, length: int) -> web.StreamResponse:
        """A piece we do not hold, promised and never sent."""
        self.lies["promised piece"] += 1
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = length
        await resp.prepare(request)
        await asyncio.sleep(HOLD)
        if request.transport is not None:
            request.transport.abort()
        return resp


def byzantine_config(config: PeerConfig, front_port: int) -> PeerConfig:
    """A byzantine node's configuration: its real piece server on a port of its own, and
    the front's address (reserved by ``Fronts.reserve``) advertised in its place."""
    return dataclasses.replace(
        config, listen=HostPort("127.0.0.1", free_port()), advertise=f"http://127.0.0.1:{front_port}"
    )


class Fronts:
    """The fronts of one worker's byzantine nodes (configured by ``byzantine_config``)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._fronts: dict[str, ByzantineFront] = {}  # by the node's peer id
        self._reserved: dict[int, socket.socket] = {}  # listening, by port, until started

    def reserve(self) -> int:
        """Bind a front's socket now and return its port, for the node to advertise (a
        port merely found free could be taken by another process while the node starts)."""
        sock, where = bind(HostPort("127.0.0.1", 0))
        self._reserved[where.port] = sock
        return where.port

    async def start(self, node: NodeDaemon) -> None:
        config = node.peer.config
        port = URL(config.advertise).port if config.advertise else None
        if config.listen is None or port not in self._reserved:
            raise ValueError("a byzantine node needs byzantine_config with a reserved port")
        sock = self._reserved.pop(port)

        def geometry(task_id: str) -> PieceGeometry | None:
            store = node.peer.store
            blob = store.get(task_id) if store is not None else None
            return blob.geometry if blob is not None else None

        front = ByzantineFront(self.mode, config.listen.url(), geometry)
        self._fronts[config.peer_id or config.advertise] = front
        await front.start(sock)

    async def stop(self) -> None:
        for front in self._fronts.values():
            await front.stop()
        for sock in self._reserved.values():
            sock.close()
        self._reserved.clear()

    def lies(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for front in self._fronts.values():
            total.update(front.lies)
        return total

    def liars(self) -> list[str]:
        """Nodes whose front twisted a piece (a lying map alone is never caught: nobody
        may have asked for a piece it does not hold; a refusal proves nothing, and is
        dropped by each requester it refuses, not excluded)."""
        return [node for node, front in self._fronts.items() if set(front.lies) - {"map", "refused piece"}]
