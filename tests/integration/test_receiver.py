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

from swarmpull.core.failures import FailureReason
from swarmpull.edges.ratelimit import RateLimiter
from swarmpull.edges.store import BlobMeta, PieceStore
from swarmpull.edges.transport import PieceClient, PieceFetchError

PIECE = 64 * 1024


class ScriptedSource:
    """Answers the n-th request with ``answers[n]`` (bytes), then closes if asked."""

    def __init__(self, answers: list[tuple[bytes, bool]]) -> None:
        self.answers = answers
        self.requests = 0
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                answer, close = self.answers[min(self.requests, len(self.answers) - 1)]
                self.requests += 1
                writer.write(answer)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


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


async def test_a_silent_source_is_a_timeout(blob):
    blob, _ = blob
    source = ScriptedSource([(head(PIECE) + b"x" * 10, False)])  # then nothing, connection open
    try:
        async with aiohttp.ClientSession() as session:
            client = PieceClient(session, "me")
            writer = blob.writer(0)
            with pytest.raises(PieceFetchError) as caught:
                await client.fetch(await source.start(), blob.task_id, 0, writer, deadline=0.5)
            writer.abort()
            client.close()
        assert caught.value.reason is FailureReason.TIMEOUT
    finally:
        await source.stop()
