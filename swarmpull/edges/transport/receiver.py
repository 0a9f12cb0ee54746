"""Receiving a piece straight into the store: an ``asyncio.BufferedProtocol`` whose
receive buffer is the piece's own pages in the blob's mapped data file (or, for a second
copy or a compressed body, a buffer of its own), so the kernel copies socket bytes once,
into the page cache. aiohttp's client costs about 1.2 CPU seconds per GB on this path
(its parser and buffers); this costs about 0.5.

One connection carries one transfer at a time and is kept open for the next (a pool per
source). The protocol reads only what the download limiter granted (``grant``): the rest
waits in the socket, so a limited node reads no faster than its limit.
"""

from __future__ import annotations

import asyncio
import enum
import math
import os
import socket
from collections.abc import Callable
from typing import cast

from swarmpull.edges.store import PieceWriter, WriteCancelled
from swarmpull.edges.transport.http1 import MAX_HEAD, ResponseHead, WireError, head_end, parse_head

SCRATCH = 256 * 1024
MAX_IDLE = 8  # idle connections kept per source


class Phase(enum.Enum):
    IDLE = "idle"  # between transfers
    HEAD = "head"  # reading a response head
    HELD = "held"  # head read; reading paused until the caller accepts the body
    BODY = "body"
    CLOSED = "closed"


class BodyTooLong(Exception):
    """The source sent bytes past the body it announced (a protocol violation)."""


class PieceConnection(asyncio.BufferedProtocol):
    """One HTTP/1.1 connection to a source. Driven by one ``fetch`` at a time: ``send``,
    ``wait`` for the head, ``accept_body`` into a writer or a buffer, ``wait`` until done."""

    def __init__(self, on_wire: Callable[[int], None] | None = None) -> None:
        self.phase = Phase.IDLE
        self.head: ResponseHead | None = None
        self.error: BaseException | None = None
        self.received = 0  # body bytes of the current transfer
        self.reused = False  # carried an earlier transfer
        self._on_wire = on_wire
        self._transport: asyncio.Transport | None = None
        self._head = bytearray(MAX_HEAD)
        self._head_len = 0
        self._early = b""  # body bytes that came with the head
        self._scratch = bytearray(SCRATCH)
        self._writer: PieceWriter | None = None
        self._buffer: bytearray | None = None
        self._length = 0
        self._budget: float = 0
        self._waiter: asyncio.Future[None] | None = None
        self._cancelled: WriteCancelled | None = None

    def __repr__(self) -> str:
        return f"<PieceConnection {self.phase.name} {self.received}/{self._length}>"

    # -------------------------------------------------------------- the caller

    @property
    def reusable(self) -> bool:
        head = self.head
        return self.phase is Phase.IDLE and self.error is None and (head is None or head.keep_alive)

    def quiet(self) -> bool:
        """Whether the idle connection is still open with nothing unread: a source that
        sent bytes past its last body, or closed, must not carry the next transfer."""
        transport = self._transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None:
            return False
        # uvloop's socket object cannot recv: peek through a duplicate of its descriptor.
        with socket.socket(fileno=os.dup(sock.fileno())) as peek:
            try:
                peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                return True  # nothing to read: open and quiet
            except OSError:
                return False
        return False  # bytes past the last body, or the source closed

    def send(self, request: bytes) -> None:
        if self._transport is None or self.phase is not Phase.IDLE:
            raise ConnectionResetError("the connection is not ready for a request")
        self.head, self.error, self.received, self._cancelled = None, None, 0, None
        self._head_len = 0
        self.phase = Phase.HEAD
        self._transport.write(request)
        self._transport.resume_reading()

    def accept_body(self, writer: PieceWriter | None, length: int, budget: float) -> bytearray | None:
        """Read the ``length``-byte body into ``writer`` (or, when None, into a new buffer,
        returned) with ``budget`` bytes granted so far."""
        self._writer = writer
        self._buffer = bytearray(length) if writer is None else None
        self._length, self._budget = length, budget
        self.phase = Phase.BODY
        early, self._early = self._early, b""
        if early:
            self._take(early)
        if self.phase is Phase.BODY and self._transport is not None:
            self._transport.resume_reading()
        return self._buffer

    def grant(self, count: float) -> None:
        """The limiter let ``count`` more bytes through."""
        self._budget += count
        if self.phase is Phase.BODY and self._transport is not None:
            self._transport.resume_reading()

    @property
    def budget(self) -> float:
        return self._budget

    async def wait(self, timeout: float) -> None:
        """Until the head is in, the body is done, the grant is spent, or it failed; a
        TimeoutError after ``timeout`` seconds of none of that."""
        if self._settled():
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._waiter
        finally:
            self._waiter = None

    def close(self) -> None:
        if self._transport is not None:
            self._transport.abort()
        self.phase = Phase.CLOSED

    # ------------------------------------------------------------ the transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._transport.pause_reading()  # nothing to read before a request

    def get_buffer(self, sizehint: int) -> memoryview:
        phase = self.phase
        if phase is Phase.HEAD:
            return memoryview(self._head)[self._head_len :]
        if phase is Phase.BODY:
            want = min(self._length - self.received, self._budget)
            want = max(int(want), 1)
            if self._buffer is not None:
                return memoryview(self._buffer)[self.received : self.received + want]
            writer = self._writer
            if writer is not None:
                try:
                    landing = writer.landing()
                except WriteCancelled as exc:  # another copy won: stop at the next read
                    self._cancelled = exc  # (closing the transport inside its read would crash it)
                else:
                    if landing is not None:
                        return landing[:want]
            return memoryview(self._scratch)[: min(want, SCRATCH)]
        return memoryview(self._scratch)  # bytes nobody asked for: a violation

    def buffer_updated(self, nbytes: int) -> None:
        phase = self.phase
        if self._cancelled is not None:
            self._fail(self._cancelled)
        elif phase is Phase.HEAD:
            self._head_len += nbytes
            self._head_read()
        elif phase is Phase.BODY:
            self._body_read(nbytes)
        elif phase is not Phase.CLOSED:
            self._fail(BodyTooLong("the source sent bytes it was not asked for"))

    def eof_received(self) -> bool:
        return False  # close: a source that half-closes is done

    def connection_lost(self, exc: Exception | None) -> None:
        was = self.phase
        self.phase = Phase.CLOSED
        self._transport = None
        if was is not Phase.IDLE and self.error is None:
            self.error = exc or ConnectionResetError("the source closed the connection")
        self._wake()

    # ----------------------------------------------------------------- internals

    def _head_read(self) -> None:
        end = head_end(self._head, self._head_len)
        if end < 0:
            if self._head_len >= MAX_HEAD:
                self._fail(WireError(f"no end of the response head in {MAX_HEAD} bytes"))
            return
        try:
            self.head = parse_head(bytes(self._head[:end]))
        except WireError as exc:
            self._fail(exc)
            return
        self._early = bytes(self._head[end : self._head_len])
        self.phase = Phase.HELD
        if self._transport is not None:
            self._transport.pause_reading()
        self._wake()

    def _body_read(self, nbytes: int) -> None:
        if self._buffer is None and self._writer is not None:
            try:
                if self._landed_in_scratch():
                    self._writer.write(memoryview(self._scratch)[:nbytes])
                else:
                    self._writer.landed(nbytes)
            except Exception as exc:  # cancelled, corrupt, a disk error: the transfer ends
                self._fail(exc)
                return
        self._advance(nbytes)

    def _landed_in_scratch(self) -> bool:
        writer = self._writer
        return writer is None or (writer.blob.mapping is None and not writer.buffered)

    def _take(self, data: bytes) -> None:
        """Body bytes that arrived with the head."""
        if len(data) > self._length:
            self._fail(BodyTooLong(f"{len(data)} bytes came with a head announcing {self._length}"))
            return
        try:
            if self._buffer is not None:
                self._buffer[: len(data)] = data
            elif self._writer is not None:
                self._writer.write(data)
        except Exception as exc:
            self._fail(exc)
            return
        self._advance(len(data))

    def _advance(self, nbytes: int) -> None:
        self.received += nbytes
        self._budget -= nbytes
        if self._on_wire is not None:
            self._on_wire(nbytes)
        if self.received >= self._length:
            self.phase = Phase.IDLE
            self._writer = None
            if self._transport is not None:
                self._transport.pause_reading()
            self._wake()
        elif self._budget <= 0:
            if self._transport is not None:
                self._transport.pause_reading()
            self._wake()

    def _settled(self) -> bool:
        if self.error is not None or self.phase in (Phase.HELD, Phase.IDLE, Phase.CLOSED):
            return True
        return self.phase is Phase.BODY and self._budget <= 0

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.close()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class ConnectionPool:
    """Open connections to sources, kept between transfers."""

    def __init__(self, connect_timeout: float, on_wire: Callable[[int], None] | None = None) -> None:
        self._connect_timeout = connect_timeout
        self._on_wire = on_wire
        self._idle: dict[tuple[str, int], list[PieceConnection]] = {}

    def __repr__(self) -> str:
        return f"<ConnectionPool idle={sum(len(v) for v in self._idle.values())}>"

    async def connect(self, host: str, port: int, fresh: bool = False) -> PieceConnection:
        """An idle connection to ``host:port`` (unless ``fresh``), or a new one."""
        idle = self._idle.get((host, port), [])
        while idle and not fresh:
            conn = idle.pop()
            if conn.reusable and conn.quiet():
                conn.reused = True
                return conn
            conn.close()
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._connect_timeout):
            _, conn = await loop.create_connection(lambda: PieceConnection(self._on_wire), host, port)
        return conn

    def release(self, host: str, port: int, conn: PieceConnection) -> None:
        """Keep ``conn`` for the next transfer if it is clean; close it otherwise."""
        idle = self._idle.setdefault((host, port), [])
        if conn.reusable and len(idle) < MAX_IDLE:
            idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


UNLIMITED = math.inf
