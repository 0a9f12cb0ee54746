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

Requesters share what the server has: one requester holds (or waits for) at most half
the upload slots, and has at most ``POLLS_PER_REQUESTER`` long polls; all long polls
together hold at most half the process's connection budget,
so the listener keeps room for the rest of its work. A poll past a cap, or an upload past
the requester's share, is answered 429 at once. An upload whose average since it began
falls under ``MIN_SEND_RATE`` at any look from ``SEND_FLOOR`` seconds on is cut: a requester that stops
reading frees its slot (and the listener ends a connection whose sent bytes stay
unacknowledged for ``listener.SEND_STALL``). The seed's ration (``Rationing``) is looked
at before a place in line and decided once a slot is had; a copy that did not go out
whole is given back.

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
import contextlib
import enum
import fcntl
import logging
import re
import socket
import struct
import termios
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import Protocol

from aiohttp import web

from swarmpull.core.bitfield import BitfieldError, bits, from_text, to_text
from swarmpull.core.maps import PieceMap
from swarmpull.core.tasks import TASK_ID_RE
from swarmpull.edges.http import json_error
from swarmpull.edges.listener import Parked
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
POLLS_PER_REQUESTER = 64  # an honest node polls once per task it shares with us
MIN_SEND_RATE = 16 * 1024  # bytes per second an upload must average, from SEND_FLOOR on
SEND_FLOOR = 60.0  # seconds any upload may take
PACE_CHECK = 5.0  # seconds between looks at an upload's average, past SEND_FLOOR
CHECKS = 4  # supernodes' checks served at once, outside the upload slots


class Ration(enum.Enum):
    """The seed's answer to "may this piece go out now?" (``supernode.ration``)."""

    SEND = "send"
    ELSEWHERE = "elsewhere"  # peers hold it: 404, the requester takes it from them
    LATER = "later"  # copies just went out, not reported yet: 429, ask again in a second


class Rationing(Protocol):
    """The seed's ration (``supernode.ration.SeedRation``)."""

    def decide(
        self, task_id: str, piece: int, size: int, take: bool = True, requester: str | None = None
    ) -> Ration: ...
    def give_back(self, task_id: str, piece: int, size: int, requester: str | None = None) -> None: ...


class PieceServer:
    def __init__(
        self,
        store: PieceStore,
        counters: TransferCounters,
        limiter: RateLimiter | None = None,
        slots: int | None = None,
        compression: bool = True,
        queue: int | None = None,
        ration: Rationing | None = None,
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
        self._share = max(1, slots // 2) if slots else None  # uploads a requester holds or waits for
        self._uploads: Counter[str] = Counter()  # requester -> uploads it holds or waits for
        self._polls = Parked(POLLS_PER_REQUESTER)  # long polls of maps
        self._checks = 0  # supernodes' checks being served
        self._unlimited = RateLimiter(None)
        self._compressor = PieceCompressor() if compression else None
        self._changed: dict[str, asyncio.Event] = {}
        self._closed = False
        self.active = 0  # uploads under way

    def routes(self) -> list[web.RouteDef]:
        # No HEAD (405): it took a slot and spent one of the seed's copies with no byte sent
        # (attack round 8), and a body written after its head broke the connection.
        return [
            web.get("/pieces/{task_id}/map", self.handle_map, allow_head=False),
            web.get("/pieces/{task_id}/{piece}", self.handle, allow_head=False),
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
        who = self._admit(request, task_id)
        if isinstance(who, web.Response):
            return who
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
            if self._polls.full(who):
                return json_error(429, "BUSY", "too many long polls wait here", {"Retry-After": "5"})
            event = self._changed.setdefault(task_id, asyncio.Event())
            with self._polls.parked(who), contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await event.wait()
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
        who = self._admit(request, task_id)
        if isinstance(who, web.Response):
            return who
        piece = int(piece_text)
        blob = self._store.get(task_id)
        if blob is None:
            return json_error(404, "NOT_FOUND", f"task {task_id} is not held here")
        if piece >= blob.geometry.count:
            return json_error(400, "BAD_REQUEST", f"piece {piece} out of range")
        if not blob.is_verified(piece):
            return json_error(404, "NOT_FOUND", f"piece {piece} is not held here")
        if self._gate is not None and self._gate.checking(request):
            return await self._checked(request, blob, piece)
        refusal = self._rationed(task_id, piece, blob.geometry.length(piece), who, take=False)
        if refusal is not None:  # at once, without a place in line
            return refusal
        if who is not None and self._share is not None and self._uploads[who] >= self._share:
            self._counters.refused.inc()
            return json_error(429, "BUSY", "you hold your share of the upload slots", {"Retry-After": "1"})
        with self._holding(who):
            return await self._upload(request, blob, piece, who)

    @contextlib.contextmanager
    def _holding(self, who: str | None) -> Iterator[None]:
        if who is None:
            yield
            return
        self._uploads[who] += 1
        try:
            yield
        finally:
            self._uploads[who] -= 1
            if not self._uploads[who]:
                del self._uploads[who]

    async def _upload(
        self, request: web.Request, blob: StoredBlob, piece: int, who: str | None
    ) -> web.StreamResponse:
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
            size = blob.geometry.length(piece)
            refusal = self._rationed(blob.task_id, piece, size, who, take=True)  # counted now it goes
            if refusal is not None:
                return refusal
            whole = False
            try:
                resp, whole = await self._send_piece(request, blob, piece, self._limiter)
                return resp
            finally:  # cancelled too (the requester hung up)
                if not whole and self._ration is not None:
                    self._ration.give_back(blob.task_id, piece, size, who)
        finally:
            self._give_slot()

    async def _send_piece(
        self, request: web.Request, blob: StoredBlob, piece: int, limiter: RateLimiter
    ) -> tuple[web.StreamResponse, bool]:
        """The piece from the store file (pinned while it goes), and whether it went out
        whole."""
        with self._store.pinned(blob):
            try:
                offset, length = await asyncio.to_thread(blob.piece_region, piece)
            except PieceCorrupt:
                return json_error(404, "NOT_FOUND", f"piece {piece} is not held here"), False
            except StoreError as exc:
                return json_error(404, "NOT_FOUND", str(exc)), False
            return await self._send(request, blob, piece, offset, length, limiter)

    async def _checked(self, request: web.Request, blob: StoredBlob, piece: int) -> web.StreamResponse:
        """A supernode's check of a piece, served at once: outside the upload slots, their
        line and the upload limit (a check is one piece, at most one per source a minute
        from each supernode; only with mutual TLS, ``PieceGate.checking``). Queued behind
        uploads, a source whose slots liars hold would look silent to the check, and their
        accusations would decide."""
        if self._checks >= CHECKS:
            return json_error(429, "BUSY", "too many checks at once", {"Retry-After": "1"})
        self._checks += 1
        try:
            resp, _ = await self._send_piece(request, blob, piece, self._unlimited)
            return resp
        finally:
            self._checks -= 1

    def _rationed(
        self, task_id: str, piece: int, size: int, who: str | None, take: bool
    ) -> web.Response | None:
        """The seed's refusal of ``piece`` to ``who`` now (its ration), if it refuses."""
        ration = (
            self._ration.decide(task_id, piece, size, take, who) if self._ration is not None else Ration.SEND
        )
        if ration is Ration.ELSEWHERE:
            return json_error(404, "NOT_FOUND", f"piece {piece} is rationed here: peers hold it")
        if ration is Ration.LATER:
            message = f"piece {piece} went out to peers a moment ago"
            return json_error(429, "BUSY", message, {"Retry-After": "1"})
        return None

    def _min_rate(self) -> float:
        """What an upload must average: ``MIN_SEND_RATE``, less when our own upload limit
        shared by every slot allows less."""
        rate = self._limiter.rate
        if rate is None:
            return MIN_SEND_RATE
        return min(MIN_SEND_RATE, rate / (2 * (self._slots or 1)))

    def _admit(self, request: web.Request, task_id: str) -> str | web.Response | None:
        """The requester's name (None: no gate here, so no name), or the 403."""
        return self._gate.admit(request, task_id) if self._gate is not None else None

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
        self,
        request: web.Request,
        blob: StoredBlob,
        piece: int,
        offset: int,
        length: int,
        limiter: RateLimiter,
    ) -> tuple[web.StreamResponse, bool]:
        """The response, and whether its body went out whole (within ``limiter``)."""
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.headers[MAP_HEADER] = to_text(blob.have, blob.geometry.count)
        body: bytes | None = None
        if self._compressor is not None and "zstd" in request.headers.get("Accept-Encoding", ""):
            body = await self._compressor.compressed_region(blob.task_id, piece, blob.fd, offset, length)
            if body is not None:
                resp.headers["Content-Encoding"] = "zstd"
                self._counters.saved.labels("upload").inc(length - len(body))
        sendfile = body is None and can_sendfile(request)
        try:
            if body is None and not sendfile:
                body = await asyncio.to_thread(blob.read, offset, length)
                if len(body) != length:
                    return json_error(404, "NOT_FOUND", f"piece {piece} could not be read"), False
            with self._paced(request) as count:
                if body is None:
                    resp.content_length = length
                    await send_region(request, resp, blob.fd, offset, length, limiter, count)
                else:
                    await self._write(request, resp, body, count, limiter)
            return resp, True
        except TimeoutError:  # read too slowly to be anything but a slot held
            log.info("piece %d of %s: the requester reads too slowly; cut", piece, blob.task_id)
            _reset(request)
        except ConnectionResetError:  # the requester hung up (an endgame twin lost)
            pass
        except OSError as exc:  # the file went under us: the requester sees a cut body
            log.warning("piece %d of %s: %s", piece, blob.task_id, exc)
            if request.transport is not None:
                request.transport.close()
        return resp, False

    @contextlib.contextmanager
    def _paced(self, request: web.Request) -> Iterator[Callable[[int], None]]:
        """A body sent within: from ``SEND_FLOOR`` seconds on, what the requester took
        (the bytes sent less those still in our buffers and the kernel's, which hold
        megabytes) must have averaged ``_min_rate`` since it started, looked at every
        ``PACE_CHECK`` seconds, or the block is cancelled (TimeoutError out of it).
        Yields what counts bytes sent."""
        loop = asyncio.get_running_loop()
        transport = request.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        started, rate, sent = loop.time(), self._min_rate(), [0]
        task = asyncio.current_task()
        assert task is not None

        def count(n: int) -> None:
            sent[0] += n
            self._counters.upload_bytes.inc(n)

        def taken() -> int:
            held = transport.get_write_buffer_size() if transport is not None else 0
            if sock is not None:
                with contextlib.suppress(OSError):
                    held += struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
            return sent[0] - held

        def check() -> None:
            nonlocal looking
            if taken() < rate * (loop.time() - started):
                cut.append(True)
                task.cancel()  # read too slowly to be anything but a slot held
                return
            looking = loop.call_later(PACE_CHECK, check)

        cut: list[bool] = []
        looking = loop.call_at(started + SEND_FLOOR, check)
        try:
            yield count
        except asyncio.CancelledError:
            if cut and task.uncancel() == 0:
                raise TimeoutError from None
            raise
        finally:
            looking.cancel()

    async def _write(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        body: bytes,
        count: Callable[[int], None],
        limiter: RateLimiter,
    ) -> None:
        resp.content_length = len(body)
        data = memoryview(body)
        # The first chunk's turn before the head (aiohttp sends it at once): the body
        # follows its head without a pause, so a head and then nothing is a lie.
        await limiter.acquire(min(CHUNK, len(data)))
        await resp.prepare(request)
        for start in range(0, len(data), CHUNK):
            chunk = data[start : start + CHUNK]
            if start:
                await limiter.acquire(len(chunk))
            await resp.write(chunk)
            count(len(chunk))
        await resp.write_eof()


def _reset(request: web.Request) -> None:
    """End the connection with a reset: what the kernel still holds for it is dropped, not
    sent on at the pace of the reader we cut (megabytes of socket buffers)."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
