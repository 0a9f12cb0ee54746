"""Serving verified pieces to other nodes: ``GET /pieces/<task_id>/<index>``.

At most ``slots`` uploads run at once; one more is refused at once with 429 and a
``Retry-After`` hint (the requester reports ``busy`` and is sent elsewhere), never queued.
Bytes pass the upload limiter chunk by chunk, so the node's upload rate holds whatever
the number of requesters. A piece is sent zstd-compressed when the requester accepts it
and it pays (see ``compression``); the limiter counts the compressed bytes.
"""

from __future__ import annotations

import logging

from aiohttp import web

from swarmpull.core.tasks import TASK_ID_RE
from swarmpull.edges.http import json_error
from swarmpull.edges.ratelimit import RateLimiter
from swarmpull.edges.store import PieceStore
from swarmpull.edges.transport.client import CHUNK
from swarmpull.edges.transport.compression import PieceCompressor
from swarmpull.edges.transport.counters import TransferCounters

log = logging.getLogger(__name__)


class PieceServer:
    def __init__(
        self,
        store: PieceStore,
        counters: TransferCounters,
        limiter: RateLimiter | None = None,
        slots: int | None = None,
        compression: bool = True,
    ) -> None:
        self._store = store
        self._counters = counters
        self._limiter = limiter or RateLimiter(None)
        self._slots = slots
        self._compressor = PieceCompressor() if compression else None
        self.active = 0  # uploads under way

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/pieces/{task_id}/{piece}", self.handle)]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        task_id = request.match_info["task_id"]
        piece_text = request.match_info["piece"]
        if not TASK_ID_RE.match(task_id):
            return json_error(400, "BAD_REQUEST", f"invalid task id {task_id!r}")
        if not piece_text.isdigit() or len(piece_text) > 9:
            return json_error(400, "BAD_REQUEST", f"invalid piece index {piece_text!r}")
        piece = int(piece_text)
        blob = self._store.get(task_id)
        if blob is None:
            return json_error(404, "NOT_FOUND", f"task {task_id} is not held here")
        if piece >= blob.geometry.count:
            return json_error(400, "BAD_REQUEST", f"piece {piece} out of range")
        if not blob.is_verified(piece):
            return json_error(404, "NOT_FOUND", f"piece {piece} is not held here")
        if self._slots is not None and self.active >= self._slots:
            self._counters.refused.inc()
            return json_error(429, "BUSY", "every upload slot is busy", {"Retry-After": "1"})
        self.active += 1
        try:
            with self._store.pinned(blob):
                return await self._send(request, task_id, piece, blob.map_piece(piece))
        finally:
            self.active -= 1

    async def _send(
        self, request: web.Request, task_id: str, piece: int, view: memoryview
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        body: memoryview | bytes = view
        if self._compressor is not None and "zstd" in request.headers.get("Accept-Encoding", ""):
            compressed = await self._compressor.compressed(task_id, piece, view)
            if compressed is not None:
                body = compressed
                resp.headers["Content-Encoding"] = "zstd"
                self._counters.saved.labels("upload").inc(len(view) - len(compressed))
        resp.content_length = len(body)
        try:
            await resp.prepare(request)
            data = memoryview(body)
            for start in range(0, len(data), CHUNK):
                chunk = data[start : start + CHUNK]
                await self._limiter.acquire(len(chunk))
                await resp.write(chunk)
                self._counters.upload_bytes.inc(len(chunk))
            await resp.write_eof()
        except ConnectionResetError:  # the requester hung up (an endgame twin lost)
            pass
        return resp
