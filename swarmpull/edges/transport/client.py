"""Fetching a piece from another node over HTTP."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from swarmpull.core.failures import FailureReason as Reason
from swarmpull.core.rates import Priority
from swarmpull.edges.http import PEER_HEADER
from swarmpull.edges.ratelimit import RateLimiter
from swarmpull.edges.store import PieceWriter
from swarmpull.edges.transport.compression import CompressionError, decompress_piece

CHUNK = 64 * 1024


class PieceFetchError(Exception):
    """A transfer failed, and why."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class PieceTransport(Protocol):
    async def fetch(
        self, address: str, task_id: str, piece: int, writer: PieceWriter, priority: Priority
    ) -> int:
        """Stream the piece from the node at ``address`` into ``writer`` (which hashes it);
        returns the bytes that crossed the wire. Raises PieceFetchError; the caller commits."""


@dataclass(frozen=True, slots=True)
class TransportConfig:
    """Piece transfers between nodes."""

    connect_timeout: float = 5.0
    """Seconds to open a connection to a source."""
    stall_timeout: float = 30.0
    """Seconds without a byte before a transfer is abandoned as stalled."""
    compression: bool = True
    """Accept zstd-compressed pieces (senders compress only when it pays)."""


class HttpPieceTransport:
    """``PieceTransport`` over HTTP/1.1 (aiohttp), keeping connections to sources open.

    Wire bytes pass the download limiter chunk by chunk before they are read on, so a
    limited node reads no faster than its limit whatever the number of transfers."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        peer_id: str,
        config: TransportConfig | None = None,
        limiter: RateLimiter | None = None,
        on_wire: Callable[[int], None] | None = None,
        on_saved: Callable[[int], None] | None = None,
    ) -> None:
        self._session = session
        self._peer_id = peer_id
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
        self._on_saved = on_saved

    async def fetch(
        self,
        address: str,
        task_id: str,
        piece: int,
        writer: PieceWriter,
        priority: Priority = Priority.FOREGROUND,
    ) -> int:
        url = f"{address}/pieces/{task_id}/{piece}"
        wire = 0
        try:
            async with self._session.get(url, headers=self._headers, timeout=self._timeout) as resp:
                _check_status(resp, address, piece)
                compressed = resp.headers.get("Content-Encoding", "identity") == "zstd"
                if compressed and (resp.content_length or 0) > writer.length:
                    raise PieceFetchError(
                        Reason.CORRUPT, f"{address}: compressed piece larger than the piece"
                    )
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
                    if self._on_saved is not None:
                        self._on_saved(writer.length - wire)
        except TimeoutError:
            raise PieceFetchError(Reason.TIMEOUT, f"{address} stalled on piece {piece}") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
            raise PieceFetchError(Reason.UNREACHABLE, f"{address}: {exc or type(exc).__name__}") from None
        return wire


def _check_status(resp: aiohttp.ClientResponse, address: str, piece: int) -> None:
    if resp.status == 200:
        return
    if resp.status == 404:
        raise PieceFetchError(Reason.MISSING, f"{address} does not hold piece {piece}")
    if resp.status in (429, 503):
        raise PieceFetchError(Reason.BUSY, f"{address} is busy ({resp.status})")
    raise PieceFetchError(Reason.ERROR, f"{address} answered {resp.status}")
