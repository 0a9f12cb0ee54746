"""Fetching pieces, and piece maps, from other nodes over HTTP.

Pieces from an ``http://`` source come through ``receiver`` (the socket's bytes land in
the piece's pages, no copy); maps, and sources over TLS, through aiohttp. With mutual TLS
(``tls``) every source is ``https://`` and must prove, in the handshake, to be the one
the supernode named: the node of that peer id, or for the seed any supernode.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from swarmpull.core.bitfield import to_text
from swarmpull.core.capability import CAPABILITY_HEADER
from swarmpull.core.failures import FailureReason as Reason
from swarmpull.core.identity import IdentityError
from swarmpull.core.maps import MapError, PieceMap, decode_map
from swarmpull.core.rates import Priority
from swarmpull.edges.http import PEER_HEADER, read_at_most
from swarmpull.edges.ratelimit import RateLimiter
from swarmpull.edges.store import PieceCorrupt, PieceWriter
from swarmpull.edges.tls import ClusterTls
from swarmpull.edges.transport.compression import CompressionError, decompress_piece
from swarmpull.edges.transport.http1 import WireError, piece_request
from swarmpull.edges.transport.receiver import UNLIMITED, BodyTooLong, ConnectionPool, PieceConnection
from swarmpull.edges.transport.server import MAP_HEADER

CHUNK = 256 * 1024
MAX_MAP = 16 << 20
# A piece this large has its pages made present in a worker thread before its body is
# read (about 4 ms for 4 MiB, the page cache and the file's blocks allocated): on the
# event loop that was a quarter of the receiver's CPU at 1 GiB.
PREFAULT_FROM = 1 << 20
WATCH_EVERY = 0.25
"""Seconds between a transfer's looks at its source's rate (at least)."""


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
    timeout: a source that trickles or stops is given up on, never waited for. Time a
    transfer waits for its turn on our own download link is ours, not the source's: it
    moves the deadline on (a piece of a few hundred bytes behind eight transfers on a
    100 kB/s link waits seconds for its turn, and timed out it was asked of one source
    after another while every one of them had answered at once)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        peer_id: str,
        config: TransportConfig | None = None,
        limiter: RateLimiter | None = None,
        on_wire: Callable[[int], None] | None = None,
        tls: ClusterTls | None = None,
        capability: Callable[[str], str | None] | None = None,
    ) -> None:
        self._session = session
        self._tls = tls
        # This node's capability for a task (core.capability), sent on every request.
        self._capability = capability
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
        self._stall = config.stall_timeout
        self._pool = ConnectionPool(config.connect_timeout, on_wire)

    def close(self) -> None:
        """Close the connections kept open to sources."""
        self._pool.close()

    async def fetch(
        self,
        address: str,
        task_id: str,
        piece: int,
        writer: PieceWriter,
        priority: Priority = Priority.FOREGROUND,
        deadline: float | None = None,
        source: str = "",
        seed: bool = False,
    ) -> Fetched:
        """Stream the piece from the node at ``address`` (peer ``source``, or the seed)
        into ``writer``; the caller commits it. Raises PieceFetchError."""
        path = f"/pieces/{task_id}/{piece}"
        parts = urlsplit(address)
        tls_args = self._tls_args(address, source, seed)
        clock: _Clock | None = None
        try:
            async with asyncio.timeout(deadline) as budget:
                clock = _Clock(self._limiter, priority, budget)
                if parts.scheme == "http" and parts.hostname:
                    target = (parts.hostname, parts.port or 80, parts.netloc)
                    return await self._receive(target, task_id, path, address, piece, writer, clock)
                url, headers = f"{address}{path}", self._headers_for(task_id)
                return await self._fetch(url, address, piece, writer, clock, headers, tls_args)
        except TimeoutError:
            if clock is not None and clock.slow:
                raise PieceFetchError(Reason.SLOW, f"{address} on piece {piece}: {clock.slow}") from None
            raise PieceFetchError(Reason.TIMEOUT, f"{address} too slow or stalled on piece {piece}") from None
        except WireError as exc:
            raise PieceFetchError(Reason.ERROR, f"{address} answered garbage: {exc}") from None
        except BodyTooLong as exc:
            raise PieceFetchError(Reason.CORRUPT, f"{address}: {exc}") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
            raise PieceFetchError(Reason.UNREACHABLE, f"{address}: {exc or type(exc).__name__}") from None
        finally:
            if clock is not None:
                clock.stop()

    async def _receive(
        self,
        target: tuple[str, int, str],
        task_id: str,
        path: str,
        address: str,
        piece: int,
        writer: PieceWriter,
        clock: _Clock,
    ) -> Fetched:
        host, port, netloc = target
        request = piece_request(netloc, path, self._headers_for(task_id))
        conn = await self._pool.connect(host, port)
        try:
            try:
                conn.send(request)
                if writer.length >= PREFAULT_FROM:  # while the request goes out
                    await asyncio.to_thread(writer.prefault)
                await self._settle(conn, lambda: conn.head is not None)
            except (ConnectionError, OSError):
                if not conn.reused or conn.head is not None:
                    raise
                conn.close()  # the source closed a connection we kept: once more, on a new one
                conn = await self._pool.connect(host, port, fresh=True)
                conn.send(request)
                await self._settle(conn, lambda: conn.head is not None)
            fetched = await self._body(conn, address, piece, writer, clock)
        except BaseException:
            conn.close()
            raise
        self._pool.release(host, port, conn)
        return fetched

    async def _body(
        self, conn: PieceConnection, address: str, piece: int, writer: PieceWriter, clock: _Clock
    ) -> Fetched:
        head = conn.head
        if head is None:  # _body follows a head that was read
            raise RuntimeError(f"piece {piece} from {address}: body before head")
        _check_code(head.status, address, piece)
        compressed = head.headers.get("content-encoding", "identity") == "zstd"
        length = head.content_length
        if length is None or length > writer.length or (not compressed and length != writer.length):
            raise PieceFetchError(Reason.CORRUPT, f"{address}: piece {piece} has the wrong length")
        limited = self._limiter.rate is not None
        granted = 0
        if limited:
            await clock.take(min(CHUNK, length))
            granted = min(CHUNK, length)
        body = conn.accept_body(None if compressed else writer, length, granted if limited else UNLIMITED)
        clock.watch(length, lambda: conn.received)
        try:
            while conn.received < length:
                if limited and conn.budget <= 0:
                    grant = min(CHUNK, length - granted)
                    await clock.take(grant)
                    granted += grant
                    conn.grant(grant)
                await self._settle(conn, lambda: conn.received >= length or (limited and conn.budget <= 0))
        except ConnectionError as exc:
            raise _cut_short(address, piece, conn.received, length, exc) from None
        if body is not None:
            try:
                writer.write(decompress_piece(bytes(body), writer.length))
            except CompressionError as exc:
                raise PieceFetchError(Reason.CORRUPT, f"{address}: {exc}") from None
        if writer.received != writer.length:
            raise PieceFetchError(
                Reason.CORRUPT, f"{address}: piece {piece} ended after {writer.received} of {writer.length}"
            )
        saved = writer.length - length if compressed else 0
        return Fetched(length, head.headers.get(MAP_HEADER.lower()), saved)

    async def _settle(self, conn: PieceConnection, done: Callable[[], bool]) -> None:
        """Wait until ``done()``; raises the connection's error, or TimeoutError after
        ``stall_timeout`` seconds without a byte."""
        while True:
            if conn.error is not None:
                error = conn.error
                if isinstance(error, PieceCorrupt):
                    raise PieceFetchError(Reason.CORRUPT, str(error))
                raise error
            if done():
                return
            before = (conn.received, conn.head)
            try:
                await conn.wait(self._stall)
            except TimeoutError:
                if (conn.received, conn.head) == before:
                    raise

    def _headers_for(self, task_id: str) -> dict[str, str]:
        text = self._capability(task_id) if self._capability is not None else None
        return {**self._headers, CAPABILITY_HEADER: text} if text else self._headers

    def _tls_args(self, address: str, source: str, seed: bool) -> dict[str, Any]:
        """What a request to this source passes for mutual TLS: the identity its
        certificate must name. PieceFetchError for a source that cannot prove one."""
        if self._tls is None:
            return {}
        if not address.startswith("https://"):
            raise PieceFetchError(Reason.ERROR, f"{address}: not https:// on a cluster with mutual TLS")
        try:
            return self._tls.to_supernode() if seed else self._tls.to_node(source)
        except IdentityError as exc:
            raise PieceFetchError(Reason.ERROR, f"{address}: {exc}") from None

    async def _fetch(
        self,
        url: str,
        address: str,
        piece: int,
        writer: PieceWriter,
        clock: _Clock,
        headers: dict[str, str],
        tls_args: dict[str, Any],
    ) -> Fetched:
        wire = 0
        async with self._session.get(
            url, headers=headers, timeout=self._timeout, allow_redirects=False, **tls_args
        ) as resp:
            if resp.status != 200:
                await _drain(resp)  # a short refusal read whole keeps the connection for the next
            _check_status(resp, address, piece)
            compressed = resp.headers.get("Content-Encoding", "identity") == "zstd"
            if (resp.content_length or 0) > writer.length or (
                not compressed and resp.content_length != writer.length
            ):
                raise PieceFetchError(Reason.CORRUPT, f"{address}: piece {piece} has the wrong length")
            body = bytearray() if compressed else None
            clock.watch(resp.content_length or writer.length, lambda: resp.content.total_bytes)
            try:
                async for chunk in resp.content.iter_chunked(CHUNK):
                    await clock.take(len(chunk))
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
            except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, ConnectionError) as exc:
                raise _cut_short(address, piece, wire, resp.content_length, exc) from None
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
        self,
        address: str,
        task_id: str,
        count: int,
        known: int,
        after: int,
        wait: float,
        source: str = "",
        seed: bool = False,
    ) -> PieceMap:
        """The source's piece map (long-polling up to ``wait`` seconds for a version past
        ``after``); statements only for pieces outside ``known``. Raises PieceFetchError."""
        url = f"{address}/pieces/{task_id}/map"
        tls_args = self._tls_args(address, source, seed)
        params = {"known": to_text(known, count), "after": str(after), "wait": f"{wait:.1f}"}
        timeout = aiohttp.ClientTimeout(
            total=wait + self._timeout.sock_read, sock_connect=self._timeout.sock_connect
        )
        try:
            async with self._session.get(
                url,
                headers=self._headers_for(task_id),
                params=params,
                timeout=timeout,
                allow_redirects=False,
                **tls_args,
            ) as resp:
                if resp.status != 200:
                    await _drain(resp)
                if resp.status == 404:
                    raise PieceFetchError(Reason.MISSING, f"{address} does not hold {task_id}")
                if resp.status != 200:
                    raise PieceFetchError(Reason.ERROR, f"{address} answered {resp.status} for its map")
                data = await read_at_most(
                    resp.content, MAX_MAP
                )  # to its end: the connection serves the next poll
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


async def _drain(resp: aiohttp.ClientResponse, limit: int = 64 * 1024) -> None:
    """Read a short answer to its end, so its connection goes back to the pool instead of
    being closed (each new connection to a source is a TLS handshake); a long one is left
    to close with its connection."""
    with contextlib.suppress(aiohttp.ClientError, OSError):
        await read_at_most(resp.content, limit)


def _check_status(resp: aiohttp.ClientResponse, address: str, piece: int) -> None:
    _check_code(resp.status, address, piece)


def _cut_short(address: str, piece: int, got: int, announced: int | None, exc: Exception) -> PieceFetchError:
    """The source answered the piece, then closed before the length it announced: a
    broken promise, counted against it as a corrupt piece is (a source that truncates
    every piece is excluded like one that flips a byte), not as an unreachable one."""
    why = str(exc) or type(exc).__name__
    message = f"{address}: piece {piece} cut after {got} of {announced} bytes ({why})"
    return PieceFetchError(Reason.CORRUPT, message)


def _check_code(status: int, address: str, piece: int) -> None:
    if status == 200:
        return
    if status == 404:
        raise PieceFetchError(Reason.MISSING, f"{address} does not hold piece {piece}")
    if status in (429, 503):
        raise PieceFetchError(Reason.BUSY, f"{address} is busy ({status})")
    raise PieceFetchError(Reason.ERROR, f"{address} answered {status}")


class _Clock:
    """One transfer's clock: its turns on our download link (``limiter``), during which
    its deadline (``budget``) stands still, and a watchdog over the source's bytes.

    From the head on, the watchdog looks at the source's bytes every ``WATCH_EVERY`` (at
    least; an eighth of the deadline for long ones) and ends the transfer as ``slow``,
    rather than holding it and one of our slots to the deadline, when they come so slowly
    that the piece would take over twice its deadline (a source that sends a few bytes
    now and then), or when none came for four looks (a source waits for its upload link
    before it answers, not between head and body: one that answers and sends nothing
    promised a piece it does not send)."""

    def __init__(self, limiter: RateLimiter, priority: Priority, budget: asyncio.Timeout) -> None:
        self._limiter = limiter
        self._priority = priority
        self._budget = budget
        self._loop = asyncio.get_running_loop()
        self._received: Callable[[], int] | None = None
        self._length = 0
        self._started = 0.0
        self._every = WATCH_EVERY
        self._waits = 0  # turns on our link under way: the watchdog does not count them
        self._waited = 0.0  # seconds spent waiting for them since the body started
        self._watch: asyncio.TimerHandle | None = None
        self.slow: str | None = None  # why the watchdog gave up, when it did

    async def take(self, count: int) -> None:
        if self._limiter.rate is None:
            return  # an unlimited link: no turn to wait for, and no timer to move per chunk
        when = self._budget.when()
        if when is None or self._budget.expired():  # over: the wait ends at its first await
            await self._limiter.acquire(count, self._priority)
            return
        started = self._loop.time()
        left = when - started
        self._budget.reschedule(None)
        self._waits += 1
        try:
            await self._limiter.acquire(count, self._priority)
        finally:
            self._waits -= 1
            now = self._loop.time()
            self._waited += now - started
            self._budget.reschedule(now + left)

    def watch(self, length: int, received: Callable[[], int]) -> None:
        """The body (``length`` bytes on the wire) started; ``received()``: its bytes so far."""
        when = self._budget.when()
        if when is None:
            return
        self._received, self._length = received, length
        self._started, self._waited = self._loop.time(), 0.0
        self._every = max(WATCH_EVERY, (when - self._started) / 8)
        self._watch = self._loop.call_later(self._every, self._look)

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    def _look(self) -> None:
        self._watch = None
        when, received = self._budget.when(), self._received
        if self._budget.expired() or when is None or received is None:
            return  # the deadline came first, in this turn of the loop
        if self._waits:  # waiting for our own link: not the source's time
            self._watch = self._loop.call_later(self._every, self._look)
            return
        now = self._loop.time()
        got = received()
        seconds = now - self._started - self._waited
        if got == 0 and seconds >= 4 * self._every:
            self.slow = f"answered, then sent nothing for {seconds:.2f} s"
        elif got > 0 and seconds > 0 and (self._length - got) * seconds / got > 2 * (when - now) + seconds:
            self.slow = f"{got} of {self._length} bytes in {seconds:.2f} s: far too slow for its deadline"
        if self.slow:
            self._budget.reschedule(now)  # the transfer's deadline, now
        else:
            self._watch = self._loop.call_later(self._every, self._look)
