"""Serving verified pieces, and the map of them, to other nodes.

    GET /pieces/<task_id>/map?known=<bitfield>&after=<version>&wait=<seconds>
        the pieces held and the signed sha256 of those the requester does not know
        (``swarmpull.core.maps``); with ``wait``, answered once more pieces are held
        than ``after`` (a long poll), or when the wait is over
    GET /pieces/<task_id>/<index>
        200 with the piece's bytes (zstd when it pays), and ``X-Swarmpull-Map``: the
        pieces held now, so a requester's view of us is fresh after every transfer;
        404 when the piece is not held (at the seed: or peers hold it, ``Ration``);
        429 + Retry-After when every upload slot is busy and the line for one is full,
        or when the seed's copies of the piece went out a moment ago

Both answer 403 (JSON, no byte) without a valid capability for the task (``gate``).

At most ``slots`` uploads run at once; up to ``queue`` more wait for a slot in arrival
order (a requester that pipelines requests keeps our link busy between pieces), and one
more is refused at once. Bytes pass the upload limiter chunk by chunk, so the node's
upload rate holds whatever the number of requesters; the head goes out with the first
chunk's turn, never before it (requesters give up on a source that answers and then
sends nothing). A piece that does not compress goes
out with ``sendfile`` from the page cache (``sendfile``); only a piece that compresses is
read into memory (and its compressed form cached). Only checked bytes leave: a piece
of a blob not re-hashed since a restart is checked before it is sent.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
from collections import deque
from collections.abc import Callable

from aiohttp import web

from swarmpull.core.bitfield import BitfieldError, bits, from_text, to_text
from swarmpull.core.maps import PieceMap
from swarmpull.core.tasks import TASK_ID_RE
from swarmpull.edges.http import json_error
from swarmpull.edges.ratelimit import RateLimiter
from swarmpull.edges.store import PieceCorrupt, PieceStore, StoredBlob, StoreError
from swarmpull.edges.transport.compression import PieceCompressor
from swarmpull.edges.transport.counters import TransferCounters
from swarmpull.edges.transport.gate import PieceGate
from swarmpull.edges.transport.sendfile import can_sendfile, send_region

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
_PIECE_RE = re.compile(r"[0-9]{1,9}")
MAP_HEADER = "X-Swarmpull-Map"
MAX_MAP_WAIT = 30.0


class Ration(enum.Enum):
    """The seed's answer to "may this piece go out now?" (``supernode.ration``)."""

    SEND = "send"
    ELSEWHERE = "elsewhere"  # peers hold it: 404, the requester takes it from them
    LATER = "later"  # copies just went out, not reported yet: 429, ask again in a second


class PieceServer:
    def __init__(
        self,
        store: PieceStore,
        counters: TransferCounters,
        limiter: RateLimiter | None = None,
        slots: int | None = None,
        compression: bool = True,
        queue: int | None = None,
        ration: Callable[[str, int, int], Ration] | None = None,
        gate: PieceGate | None = None,
    ) -> None:
        self._store = store
        self._gate = gate  # None: anyone who reaches the server (benchmarks, unit tests)
        self._ration = ration  # the seed's: may this piece go out now? (supernode.ration)
        self._counters = counters
        self._limiter = limiter or RateLimiter(None)
        self._slots = slots
        self._queue_cap = queue if queue is not None else (slots or 0)
        self._line: deque[asyncio.Future[None]] = deque()
        self._compressor = PieceCompressor() if compression else None
        self._changed: dict[str, asyncio.Event] = {}
        self._closed = False
        self.active = 0  # uploads under way

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/pieces/{task_id}/map", self.handle_map),
            web.get("/pieces/{task_id}/{piece}", self.handle),
        ]

    def close(self) -> None:
        """Answer every long poll and every request in line now (the daemon is stopping)."""
        self._closed = True
        for event in self._changed.values():
            event.set()
        self._changed.clear()
        while self._line:
            turn = self._line.popleft()
            if not turn.done():
                turn.set_exception(ConnectionAbortedError("the piece server is stopping"))

    def notify(self, blob: StoredBlob) -> None:
        """``blob`` holds one more piece: answer the long polls on its map."""
        event = self._changed.pop(blob.task_id, None)
        if event is not None:
            event.set()

    # ------------------------------------------------------------------- maps

    async def handle_map(self, request: web.Request) -> web.StreamResponse:
        task_id = request.match_info["task_id"]
        if not TASK_ID_RE.fullmatch(task_id):
            return json_error(400, "BAD_REQUEST", f"invalid task id {task_id!r}")
        refusal = self._refusal(request, task_id)
        if refusal is not None:
            return refusal
        blob = self._store.get(task_id)
        if blob is None:
            return json_error(404, "NOT_FOUND", f"task {task_id} is not held here")
        count = blob.geometry.count
        try:
            known = from_text(request.query.get("known", ""), count) if request.query.get("known") else 0
            after = int(request.query.get("after", "-1"))
            wait = min(max(float(request.query.get("wait", "0")), 0.0), MAX_MAP_WAIT)
        except (BitfieldError, ValueError) as exc:
            return json_error(400, "BAD_REQUEST", f"bad map query: {exc}")
        if wait > 0 and blob.verified_count <= after and not self._closed:
            event = self._changed.setdefault(task_id, asyncio.Event())
            try:
                async with asyncio.timeout(wait):
                    await event.wait()
            except TimeoutError:
                pass
            blob = self._store.get(task_id)
            if blob is None:
                return json_error(404, "NOT_FOUND", f"task {task_id} is not held here")
        statements = []
        for piece in bits(blob.have & ~known):
            signed = blob.signed(piece)
            if signed is not None:
                statements.append(signed)
        body = PieceMap(count, blob.verified_count, blob.have, statements).encode()
        return web.Response(body=body, content_type="application/octet-stream")

    # ----------------------------------------------------------------- pieces

    async def handle(self, request: web.Request) -> web.StreamResponse:
        task_id = request.match_info["task_id"]
        piece_text = request.match_info["piece"]
        if not TASK_ID_RE.fullmatch(task_id):
            return json_error(400, "BAD_REQUEST", f"invalid task id {task_id!r}")
        if not _PIECE_RE.fullmatch(piece_text):  # not isdigit(): "²" is a digit int() refuses
            return json_error(400, "BAD_REQUEST", f"invalid piece index {piece_text!r}")
        refusal = self._refusal(request, task_id)
        if refusal is not None:
            return refusal
        piece = int(piece_text)
        blob = self._store.get(task_id)
        if blob is None:
            return json_error(404, "NOT_FOUND", f"task {task_id} is not held here")
        if piece >= blob.geometry.count:
            return json_error(400, "BAD_REQUEST", f"piece {piece} out of range")
        if not blob.is_verified(piece):
            return json_error(404, "NOT_FOUND", f"piece {piece} is not held here")
        size = blob.geometry.length(piece)
        ration = self._ration(task_id, piece, size) if self._ration is not None else Ration.SEND
        if ration is Ration.ELSEWHERE:
            return json_error(404, "NOT_FOUND", f"piece {piece} is rationed here: peers hold it")
        if ration is Ration.LATER:
            message = f"piece {piece} went out to peers a moment ago"
            return json_error(429, "BUSY", message, {"Retry-After": "1"})
        try:
            slot = await self._take_slot()
        except ConnectionAbortedError:
            return json_error(503, "STOPPING", "this node is stopping", {"Retry-After": "1"})
        if not slot:
            self._counters.refused.inc()
            return json_error(429, "BUSY", "every upload slot is busy", {"Retry-After": "1"})
        try:
            if blob.removed or not blob.is_verified(piece):
                return json_error(404, "NOT_FOUND", f"piece {piece} is not held here")
            with self._store.pinned(blob):
                try:
                    offset, length = await asyncio.to_thread(blob.piece_region, piece)
                except PieceCorrupt:
                    return json_error(404, "NOT_FOUND", f"piece {piece} is not held here")
                except StoreError as exc:
                    return json_error(404, "NOT_FOUND", str(exc))
                return await self._send(request, blob, piece, offset, length)
        finally:
            self._give_slot()

    def _refusal(self, request: web.Request, task_id: str) -> web.Response | None:
        return self._gate.refusal(request, task_id) if self._gate is not None else None

    async def _take_slot(self) -> bool:
        """A slot now, or a place in line for one; False when the line is full."""
        if self._closed:
            raise ConnectionAbortedError("the piece server is stopping")
        if self._slots is None or (self.active < self._slots and not self._line):
            self.active += 1
            return True
        if len(self._line) >= self._queue_cap:
            return False
        turn = asyncio.get_running_loop().create_future()
        self._line.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn in self._line:
                self._line.remove(turn)
            elif turn.done() and not turn.cancelled():
                self._give_slot()  # handed a slot as the requester hung up
            raise
        return True

    def _give_slot(self) -> None:
        while self._line:
            turn = self._line.popleft()
            if not turn.done():
                turn.set_result(None)  # the slot passes on: active stays the same
                return
        self.active -= 1

    async def _send(
        self, request: web.Request, blob: StoredBlob, piece: int, offset: int, length: int
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.headers[MAP_HEADER] = to_text(blob.have, blob.geometry.count)
        body: bytes | None = None
        if self._compressor is not None and "zstd" in request.headers.get("Accept-Encoding", ""):
            body = await self._compressor.compressed_region(blob.task_id, piece, blob.fd, offset, length)
            if body is not None:
                resp.headers["Content-Encoding"] = "zstd"
                self._counters.saved.labels("upload").inc(length - len(body))
        try:
            if body is None and can_sendfile(request):
                resp.content_length = length
                await send_region(
                    request, resp, blob.fd, offset, length, self._limiter, self._counters.upload_bytes.inc
                )
                return resp
            if body is None:
                body = await asyncio.to_thread(blob.read, offset, length)
                if len(body) != length:
                    return json_error(404, "NOT_FOUND", f"piece {piece} could not be read")
            resp.content_length = len(body)
            data = memoryview(body)
            # The first chunk's turn before the head (aiohttp sends it at once): the body
            # follows its head without a pause, so a head and then nothing is a lie.
            await self._limiter.acquire(min(CHUNK, len(data)))
            await resp.prepare(request)
            for start in range(0, len(data), CHUNK):
                chunk = data[start : start + CHUNK]
                if start:
                    await self._limiter.acquire(len(chunk))
                await resp.write(chunk)
                self._counters.upload_bytes.inc(len(chunk))
            await resp.write_eof()
        except ConnectionResetError:  # the requester hung up (an endgame twin lost)
            pass
        except OSError as exc:  # the file went under us: the requester sees a cut body
            log.warning("piece %d of %s: %s", piece, blob.task_id, exc)
            if request.transport is not None:
                request.transport.close()
        return resp
