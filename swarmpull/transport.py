"""The piece transport: how one node fetches a piece from another, and serves its own.

The downloader sees only ``PieceTransport`` (one method), so another data plane (a
BitTorrent one, say) can sit beside this HTTP one. The HTTP form:

    GET /pieces/<task_id>/<index>      ->  200 with exactly the piece's bytes
                                           404 when the piece is not held (verified)

Both the supernode (as the seed) and every peer serve pieces with ``PieceServer``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from aiohttp import web

from swarmpull.http import PEER_HEADER, json_error
from swarmpull.store import PieceStore, PieceWriter
from swarmpull.tasks import TASK_ID_RE

log = logging.getLogger(__name__)

CHUNK = 64 * 1024


class PieceFetchError(Exception):
    """A transfer failed; ``reason`` is one of the protocol's failure reasons."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class PieceTransport(Protocol):
    async def fetch(self, address: str, task_id: str, piece: int, writer: PieceWriter) -> None:
        """Stream the piece from the node at ``address`` into ``writer`` (which hashes it).
        Raises PieceFetchError; the caller commits the writer."""


@dataclass(frozen=True, slots=True)
class TransportConfig:
    """Timeouts of piece transfers between nodes."""

    connect_timeout: float = 5.0
    """Seconds to open a connection to a source."""
    stall_timeout: float = 30.0
    """Seconds without a byte before a transfer is abandoned as stalled."""


class HttpPieceTransport:
    """``PieceTransport`` over HTTP/1.1 with aiohttp, keeping connections to sources open."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        peer_id: str,
        config: TransportConfig | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        self._session = session
        self._peer_id = peer_id
        config = config or TransportConfig()
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=config.connect_timeout, sock_read=config.stall_timeout
        )
        self._on_bytes = on_bytes

    async def fetch(self, address: str, task_id: str, piece: int, writer: PieceWriter) -> None:
        url = f"{address}/pieces/{task_id}/{piece}"
        try:
            async with self._session.get(
                url, headers={PEER_HEADER: self._peer_id}, timeout=self._timeout
            ) as resp:
                if resp.status == 404:
                    raise PieceFetchError("missing", f"{address} does not hold piece {piece}")
                if resp.status in (429, 503):
                    raise PieceFetchError("busy", f"{address} is busy ({resp.status})")
                if resp.status != 200:
                    raise PieceFetchError("error", f"{address} answered {resp.status}")
                async for chunk in resp.content.iter_chunked(CHUNK):
                    writer.write(chunk)
                    if self._on_bytes is not None:
                        self._on_bytes(len(chunk))
        except TimeoutError:
            raise PieceFetchError("timeout", f"{address} stalled on piece {piece}") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
            raise PieceFetchError("unreachable", f"{address}: {exc or type(exc).__name__}") from None


class PieceServer:
    """Serves the verified pieces of a ``PieceStore`` to other nodes."""

    def __init__(self, store: PieceStore, on_bytes: Callable[[int], None] | None = None) -> None:
        self._store = store
        self._on_bytes = on_bytes

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
        with self._store.pinned(blob):
            view = blob.map_piece(piece)
            resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            resp.content_length = len(view)
            try:
                await resp.prepare(request)
                for start in range(0, len(view), CHUNK):
                    chunk = view[start : start + CHUNK]
                    await resp.write(chunk)
                    if self._on_bytes is not None:
                        self._on_bytes(len(chunk))
                await resp.write_eof()
            except ConnectionResetError:  # the requester hung up (an endgame twin lost)
                pass
        return resp
