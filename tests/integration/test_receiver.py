"""The piece client against sources that lie: a raw socket server on loopback answers
each request as a test scripts it, and the client must map each lie to a failure,
never record a wrong piece, and never reuse a connection left in a bad state."""

from __future__ import annotations

import asyncio
import hashlib
import os

import aiohttp
import pytest
import zstandard
from aiohttp import web
from prometheus_client import CollectorRegistry

from swarmpull.core.failures import FailureReason
from swarmpull.core.rates import Priority
from swarmpull.edges.http import HostPort, start_site
from swarmpull.edges.ratelimit import RateLimiter
from swarmpull.edges.store import BlobMeta, PieceStore
from swarmpull.edges.transport import PieceClient, PieceFetchError, PieceServer, TransferCounters

PIECE = 64 * 1024


class ScriptedSource:
    """Answers the n-th request with ``answers[n]`` (bytes), then closes if asked."""

    def __init__(self, answers: list[tuple[bytes, bool]], step: int = 0, every: float = 0.0) -> None:
        """With ``step``, each answer goes out as its head, then ``step`` bytes at a time,
        each ``every`` seconds after the last."""
        self.answers = answers
        self.step, self.every = step, every
        self.requests = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._serving: set[asyncio.Task] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._serving:  # a trickle may still be under way
            task.cancel()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._serving.add(task)
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                answer, close = self.answers[min(self.requests, len(self.answers) - 1)]
                self.requests += 1
                await self._write(writer, answer)
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._serving.discard(task)
            writer.close()

    async def _write(self, writer: asyncio.StreamWriter, answer: bytes) -> None:
        first = answer.index(b"\r\n\r\n") + 4 if self.step else len(answer)
        writer.write(answer[:first])
        await writer.drain()
        for start in range(first, len(answer), self.step or 1):
            await asyncio.sleep(self.every)
            writer.write(answer[start : start + self.step])
            await writer.drain()


def head(length: int, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (length, extra)


@pytest.fixture
def blob(tmp_path):
    store = PieceStore(tmp_path)
    store.load()
    data = os.urandom(2 * PIECE)
    blob = store.create(BlobMeta("sha256-" + hashlib.sha256(data).hexdigest(), len(data), PIECE))
    yield blob, data
    store.close()


async def fetch(address: str, blob, piece: int = 0):
    async with aiohttp.ClientSession() as session:
        client = PieceClient(session, "me")
        writer = blob.writer(piece)
        try:
            fetched = await client.fetch(address, blob.task_id, piece, writer, deadline=5)
            writer.commit(hashlib.sha256(blob_data(blob, piece)).hexdigest())
            return fetched
        finally:
            writer.abort()
            client.close()


async def failed_fetch(source: ScriptedSource, blob, deadline: float) -> PieceFetchError:
    """Fetch piece 0 from ``source``, which must fail; the error, nothing recorded."""
    async with aiohttp.ClientSession() as session:
        client = PieceClient(session, "me")
        writer = blob.writer(0)
        with pytest.raises(PieceFetchError) as caught:
            await client.fetch(await source.start(), blob.task_id, 0, writer, deadline=deadline)
        writer.abort()
        client.close()
    return caught.value


def blob_data(blob, piece):
    return blob._expected[piece]


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (head(PIECE - 1) + b"x" * (PIECE - 1), FailureReason.CORRUPT),  # says less than the piece
        (head(PIECE + 1) + b"x" * (PIECE + 1), FailureReason.CORRUPT),  # says more
        (head(PIECE) + b"x" * 100, FailureReason.CORRUPT),  # closes early: a promise broken
        (b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\n", FailureReason.ERROR),  # garbage
        (b"\x16\x03\x01 not http at all\r\n\r\n", FailureReason.ERROR),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", FailureReason.ERROR),
        (b"HTTP/1.1 429 Too Many\r\nContent-Length: 0\r\n\r\n", FailureReason.BUSY),
        (b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}", FailureReason.MISSING),
        (head(PIECE, b"Content-Encoding: zstd\r\n") + b"x" * PIECE, FailureReason.CORRUPT),
    ],
)
async def test_each_lie_is_a_failure_and_nothing_is_recorded(blob, answer, reason):
    blob, data = blob
    blob._expected = [data[:PIECE], data[PIECE:]]
    source = ScriptedSource([(answer, True)])
    try:
        with pytest.raises(PieceFetchError) as caught:
            await fetch(await source.start(), blob)
        assert caught.value.reason is reason
        assert not blob.is_verified(0)
    finally:
        await source.stop()


async def test_right_bytes_land_and_a_connection_is_kept_then_dropped_after_junk(blob):
    blob, data = blob
    blob._expected = [data[:PIECE], data[PIECE:]]
    first = head(PIECE) + data[:PIECE] + b"JUNK AFTER THE BODY"  # more bytes than the piece
    second = head(PIECE) + data[PIECE:]
    source = ScriptedSource([(first, False), (second, False)])
    try:
        address = await source.start()
        async with aiohttp.ClientSession() as session:
            client = PieceClient(session, "me")
            for piece in (0, 1):
                writer = blob.writer(piece)
                await client.fetch(address, blob.task_id, piece, writer, deadline=5)
                writer.commit(hashlib.sha256(blob._expected[piece]).hexdigest())
            client.close()
        assert blob.all_verified and blob.read(0, 2 * PIECE) == data
        assert source.connections == 2  # the connection the junk came on was not reused
    finally:
        await source.stop()


async def test_a_compressed_piece_is_verified_after_decompression(blob):
    blob, _ = blob
    plain = b"a" * PIECE
    body = zstandard.ZstdCompressor(write_content_size=True).compress(plain)
    source = ScriptedSource([(head(len(body), b"Content-Encoding: zstd\r\n") + body, True)])
    try:
        async with aiohttp.ClientSession() as session:
            client = PieceClient(session, "me")
            writer = blob.writer(0)
            fetched = await client.fetch(await source.start(), blob.task_id, 0, writer, deadline=5)
            client.close()
        assert fetched.saved == PIECE - len(body)
        writer.commit(hashlib.sha256(plain).hexdigest())
        assert blob.read_piece(0) == plain
    finally:
        await source.stop()


async def test_waiting_for_our_own_link_is_not_held_against_the_source(blob):
    blob, data = blob
    piece = data[:PIECE]
    source = ScriptedSource([(head(PIECE) + piece, False)])  # answers at once, whole
    link = RateLimiter(100_000)  # our download link: 100 kB/s
    busy = asyncio.create_task(link.acquire(150_000))  # another transfer's turn: ~1.5 s
    await asyncio.sleep(0)
    try:
        async with aiohttp.ClientSession() as session:
            client = PieceClient(session, "me", limiter=link)
            writer = blob.writer(0)
            loop = asyncio.get_running_loop()
            started = loop.time()
            # Our link takes ~2.1 s (1.5 s of the other transfer, 0.65 s of this piece):
            # all ours, none the source's, so a 1 s deadline is not over.
            await client.fetch(await source.start(), blob.task_id, 0, writer, deadline=1.0)
            assert loop.time() - started > 1.0
            client.close()
        writer.commit(hashlib.sha256(piece).hexdigest())
        assert blob.read_piece(0) == piece
    finally:
        busy.cancel()
        await source.stop()


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (head(PIECE), FailureReason.TIMEOUT),  # a head, then nothing: stalled (or still in line)
        (head(PIECE) + b"x" * 10, FailureReason.SLOW),  # bytes came, far too slowly for the deadline
    ],
)
async def test_a_silent_source_is_a_timeout(blob, answer, reason):
    blob, _ = blob
    source = ScriptedSource([(answer, False)])  # then nothing, connection open
    try:
        assert (await failed_fetch(source, blob, deadline=0.5)).reason is reason
    finally:
        await source.stop()


async def test_a_trickling_source_is_given_up_on_before_its_deadline(blob):
    blob, data = blob
    # 200 bytes every 0.2 s (1 kB/s): the 64 KiB piece would take 65 s, its deadline is 20 s.
    source = ScriptedSource([(head(PIECE) + data[:PIECE], False)], step=200, every=0.2)
    try:
        error = await failed_fetch(source, blob, deadline=20.0)
        # Given up by the watchdog, as slow (a deadline missed is a timeout), long before it.
        assert error.reason is FailureReason.SLOW
        assert "far too slow for its deadline" in str(error)
    finally:
        await source.stop()


@pytest.mark.parametrize(
    ("step", "every"),
    [
        (PIECE // 16, 0.05),  # bytes flowing fast enough for the deadline, bit by bit
        (PIECE, 1.0),  # a head, then nothing for a second (a busy machine), then all of it
    ],
)
async def test_a_source_fast_enough_for_its_deadline_is_waited_for(blob, step, every):
    blob, data = blob
    piece = data[:PIECE]
    source = ScriptedSource([(head(PIECE) + piece, False)], step=step, every=every)
    try:
        async with aiohttp.ClientSession() as session:
            client = PieceClient(session, "me")
            writer = blob.writer(0)
            await client.fetch(await source.start(), blob.task_id, 0, writer, deadline=8.0)
            client.close()
        writer.commit(hashlib.sha256(piece).hexdigest())
        assert blob.read_piece(0) == piece
    finally:
        await source.stop()


async def test_a_head_that_answers_and_sends_nothing_is_slow(blob):
    blob, _ = blob
    source = ScriptedSource([(head(PIECE), False)])  # then nothing, connection open
    try:
        error = await failed_fetch(source, blob, deadline=4.0)
        assert error.reason is FailureReason.SLOW
        assert "sent nothing" in str(error)
    finally:
        await source.stop()


class GatedLink(RateLimiter):
    """An upload link that lets nothing through until ``open`` is set."""

    def __init__(self) -> None:
        super().__init__(1e9)
        self.open = asyncio.Event()

    async def acquire(self, count: int, priority: Priority = Priority.FOREGROUND) -> None:
        await self.open.wait()
        await super().acquire(count, priority)


@pytest.mark.parametrize("compressible", [False, True])  # sendfile; aiohttp's own writes
async def test_a_piece_server_answers_only_when_its_link_lets_the_body_follow(tmp_path, compressible):
    """A source waiting for its upload link has not answered yet: its head comes with its
    body, so a head followed by nothing means a source that sends nothing."""
    store = PieceStore(tmp_path)
    store.load()
    piece = bytes(PIECE) if compressible else os.urandom(PIECE)
    blob = store.create(BlobMeta("sha256-" + hashlib.sha256(piece).hexdigest(), PIECE, PIECE))
    writer = blob.writer(0)
    writer.write(piece)
    writer.commit(hashlib.sha256(piece).hexdigest())
    link = GatedLink()
    server = PieceServer(store, TransferCounters(CollectorRegistry(), "t"), link, compression=compressible)
    app = web.Application()
    app.add_routes(server.routes())
    runner, bound = await start_site(app, HostPort("127.0.0.1", 0))
    try:
        reader, sender = await asyncio.open_connection("127.0.0.1", bound.port)
        zstd = b"Accept-Encoding: zstd\r\n" if compressible else b""
        sender.write(b"GET /pieces/%s/0 HTTP/1.1\r\nHost: x\r\n%s\r\n" % (blob.task_id.encode(), zstd))
        with pytest.raises(TimeoutError):  # nothing while the link holds the body back
            async with asyncio.timeout(0.5):
                await reader.read(1)
        link.open.set()
        async with asyncio.timeout(10):
            head_bytes = await reader.readuntil(b"\r\n\r\n")
            length = int(head_bytes.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
        assert head_bytes.startswith(b"HTTP/1.1 200")
        assert (b"zstd" in head_bytes.lower()) is compressible
        assert (zstandard.ZstdDecompressor().decompress(body, PIECE) if compressible else body) == piece
        sender.close()
    finally:
        await runner.cleanup()
        store.close()
