"""Fetching pieces, and piece maps, from other nodes over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from swarmpull.core.bitfield import to_text
from swarmpull.core.failures import FailureReason as Reason
from swarmpull.core.maps import MapError, PieceMap, decode_map
from swarmpull.core.rates import Priority
from swarmpull.edges.http import PEER_HEADER
from swarmpull.edges.ratelimit import RateLimiter
from swarmpull.edges.store import PieceWriter
from swarmpull.edges.transport.compression import CompressionError, decompress_piece
from swarmpull.edges.transport.server import MAP_HEADER

CHUNK = 256 * 1024
MAX_MAP = 16 << 20


class PieceFetchError(Exception):
    """A transfer failed, and why."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TransportConfig:
    """Piece transfers between nodes."""

    connect_timeout: float = 5.0
    """Seconds to open a connection to a source."""
    stall_timeout: float = 10.0
    """Seconds without a byte before a transfer is abandoned as stalled."""
    compression: bool = True
    """Accept zstd-compressed pieces (senders compress only when it pays)."""


@dataclass(frozen=True, slots=True)
class Fetched:
    wire: int  # bytes that crossed the wire
    map: str | None  # the source's pieces now (base64 bitfield), when it said
    saved: int = 0  # bytes zstd kept off the wire


class PieceClient:
    """Pieces and maps over HTTP/1.1 (aiohttp), keeping connections to sources open.

    Wire bytes pass the download limiter chunk by chunk before they are read on, so a
    limited node reads no faster than its limit whatever the number of transfers. Every
    transfer has a deadline (the caller's, from the source's expected rate) and a stall
    timeout: a source that trickles or stops is given up on, never waited for."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        peer_id: str,
        config: TransportConfig | None = None,
        limiter: RateLimiter | None = None,
        on_wire: Callable[[int], None] | None = None,
    ) -> None:
        self._session = session
        config = config or TransportConfig()
        self._headers = {
            PEER_HEADER: peer_id,
            "Accept-Encoding": "zstd" if config.compression else "identity",
        }
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=config.connect_timeout, sock_read=config.stall_timeout
        )
        self._limiter = limiter or RateLimiter(None)
        self._on_wire = on_wire

    async def fetch(
        self,
        address: str,
        task_id: str,
        piece: int,
        writer: PieceWriter,
        priority: Priority = Priority.FOREGROUND,
        deadline: float | None = None,
    ) -> Fetched:
        """Stream the piece from the node at ``address`` into ``writer``; the caller
        commits it. Raises PieceFetchError."""
        url = f"{address}/pieces/{task_id}/{piece}"
        try:
            async with asyncio.timeout(deadline):
                return await self._fetch(url, address, piece, writer, priority)
        except TimeoutError:
            raise PieceFetchError(Reason.TIMEOUT, f"{address} too slow or stalled on piece {piece}") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
            raise PieceFetchError(Reason.UNREACHABLE, f"{address}: {exc or type(exc).__name__}") from None

    async def _fetch(
        self, url: str, address: str, piece: int, writer: PieceWriter, priority: Priority
    ) -> Fetched:
        wire = 0
        async with self._session.get(url, headers=self._headers, timeout=self._timeout) as resp:
            _check_status(resp, address, piece)
            compressed = resp.headers.get("Content-Encoding", "identity") == "zstd"
            if (resp.content_length or 0) > writer.length or (
                not compressed and resp.content_length != writer.length
            ):
                raise PieceFetchError(Reason.CORRUPT, f"{address}: piece {piece} has the wrong length")
            body = bytearray() if compressed else None
            async for chunk in resp.content.iter_chunked(CHUNK):
                await self._limiter.acquire(len(chunk), priority)
                wire += len(chunk)
                if self._on_wire is not None:
                    self._on_wire(len(chunk))
                if body is None:
                    writer.write(chunk)
                elif len(body) + len(chunk) > writer.length:
                    raise PieceFetchError(
                        Reason.CORRUPT, f"{address}: compressed piece larger than the piece"
                    )
                else:
                    body += chunk
            if body is not None:
                try:
                    writer.write(decompress_piece(bytes(body), writer.length))
                except CompressionError as exc:
                    raise PieceFetchError(Reason.CORRUPT, f"{address}: {exc}") from None
            if writer.received != writer.length:
                raise PieceFetchError(
                    Reason.CORRUPT,
                    f"{address}: piece {piece} ended after {writer.received} of {writer.length}",
                )
            return Fetched(wire, resp.headers.get(MAP_HEADER), writer.length - wire if compressed else 0)

    async def fetch_map(
        self, address: str, task_id: str, count: int, known: int, after: int, wait: float
    ) -> PieceMap:
        """The source's piece map (long-polling up to ``wait`` seconds for a version past
        ``after``); statements only for pieces outside ``known``. Raises PieceFetchError."""
        url = f"{address}/pieces/{task_id}/map"
        params = {"known": to_text(known, count), "after": str(after), "wait": f"{wait:.1f}"}
        timeout = aiohttp.ClientTimeout(
            total=wait + self._timeout.sock_read, sock_connect=self._timeout.sock_connect
        )
        try:
            async with self._session.get(url, headers=self._headers, params=params, timeout=timeout) as resp:
                if resp.status == 404:
                    raise PieceFetchError(Reason.MISSING, f"{address} does not hold {task_id}")
                if resp.status != 200:
                    raise PieceFetchError(Reason.ERROR, f"{address} answered {resp.status} for its map")
                data = await resp.content.read(MAX_MAP + 1)
                if len(data) > MAX_MAP:
                    raise PieceFetchError(Reason.CORRUPT, f"{address}: piece map too large")
        except TimeoutError:
            raise PieceFetchError(Reason.TIMEOUT, f"{address} did not answer for its map") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
            raise PieceFetchError(Reason.UNREACHABLE, f"{address}: {exc or type(exc).__name__}") from None
        try:
            return decode_map(data, count)
        except MapError as exc:
            raise PieceFetchError(Reason.CORRUPT, f"{address}: {exc}") from None


def _check_status(resp: aiohttp.ClientResponse, address: str, piece: int) -> None:
    if resp.status == 200:
        return
    if resp.status == 404:
        raise PieceFetchError(Reason.MISSING, f"{address} does not hold piece {piece}")
    if resp.status in (429, 503):
        raise PieceFetchError(Reason.BUSY, f"{address} is busy ({resp.status})")
    raise PieceFetchError(Reason.ERROR, f"{address} answered {resp.status}")
