"""Flow control over loopback: upload slots, zstd on the wire, origin caps, fallbacks.

Rates themselves are measured by `swarmpull benchmarks limits`, not asserted here: these
tests check counts and bytes.
"""

from __future__ import annotations

import asyncio
import os
import socket

import aiohttp

from loadtest.origin_server import Fault
from supernode.origin_limits import OriginLimit
from swarmpull.core.blobs import BlobRequest, DownloadFailed
from swarmpull.core.capability import CAPABILITY_HEADER
from swarmpull.core.digest import Digest
from swarmpull.edges import listener
from swarmpull.edges.http import PEER_HEADER
from swarmpull.edges.metrics import sample
from swarmpull.edges.transport import server
from tests.integration.conftest import file_sha256

KiB, MiB = 1024, 1024 * 1024


def compressible(size: int) -> bytes:
    """Like an uncompressed tar of text files: repetitive, but not trivially."""
    words = [b"layer", b"usr/lib", b"python3.11", b"site-packages", b"\x00" * 7, b"README", b"0644"]
    out = bytearray()
    i = 0
    while len(out) < size:
        out += words[i * 7 % len(words)] + str(i).encode() + b"\n"
        i += 1
    return bytes(out[:size])


def metric(peer, name, **labels):
    return sample(peer.metrics.registry, name, **labels)


async def test_busy_source_queues_then_refuses_at_once_with_a_retry_hint(swarm, upstream):
    """One upload slot: one transfer runs, one waits in line for the slot (a requester
    pipelining its requests), and one more is refused at once."""
    requesters, _ = await slotted_source(swarm, upstream, upload_limit=64 * KiB)
    source, piece_url, as_peer = requesters.source, f"{requesters.url}/0", requesters.headers
    async with aiohttp.ClientSession() as session:
        slow = await session.get(piece_url, headers=as_peer("a"))  # takes ~16 s
        assert slow.status == 200
        waiting = [asyncio.create_task(session.get(piece_url, headers=as_peer("w")))]
        async with asyncio.timeout(60):
            while source.piece_server is None or len(source.piece_server._line) < 1:
                await asyncio.sleep(0.02)
        async with session.get(piece_url, headers=as_peer("b")) as refused:
            assert refused.status == 429
            assert refused.headers["Retry-After"] == "1"
            assert (await refused.json())["error"]["code"] == "BUSY"
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        slow.close()
    assert metric(source, "swarmpull_peer_upload_refused_total") == 1


class Requesters:
    """Requesters of one source's piece 0, each with a capability of its own."""

    def __init__(self, supernode, source, request):
        self._capabilities = supernode.service.capabilities
        self._task = supernode.service.tasks[request.task_id]
        self.source = source
        self.url = f"{source.address}/pieces/{request.task_id}"
        self._address = source.address

    def headers(self, name: str) -> dict[str, str]:
        capability = self._capabilities.grant(name, [self._task])[self._task.id]
        return {PEER_HEADER: name, CAPABILITY_HEADER: capability}

    async def hold(self, name: str, read_every: float | None = None) -> tuple[asyncio.Task, asyncio.Event]:
        """A request from ``name`` for piece 0 that reads nothing (its receive window
        closes) until told, or a little every ``read_every`` seconds: its task counts what
        it got once the source cut it; set the event to make it read on."""
        host, port = self._address.removeprefix("http://").split(":")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
        lines = [f"GET {self.url.removeprefix(self._address)}/0 HTTP/1.1", f"Host: {host}:{port}"]
        lines += [f"{k}: {v}" for k, v in self.headers(name).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        read_on = asyncio.Event()

        async def until_cut() -> int:
            taken = 0
            try:
                if read_every is None:
                    await read_on.wait()
                while chunk := await reader.read(64 * KiB if read_every is None else 512):
                    taken += len(chunk)
                    if read_every is not None:
                        await asyncio.sleep(read_every)
            except OSError:
                pass
            finally:
                writer.close()
            return taken

        return asyncio.create_task(until_cut()), read_on


async def slotted_source(swarm, upstream, size=MiB, slots=1, **peer):
    """A source holding a blob in one piece, ``slots`` upload slots and as many places in line."""
    data = os.urandom(size)
    request = BlobRequest(upstream.add("layer", data), Digest.of(data))
    supernode = await swarm.start_supernode(piece_size=size)
    (source,) = await swarm.add_peers(1, upload_slots=slots, **peer)
    await source.ensure(request).wait_complete()
    return Requesters(supernode, source, request), data


async def test_a_requester_holds_at_most_its_share_of_the_slots(swarm, upstream):
    """Two slots (and two places in line): a requester holds one, whatever it asks."""
    requesters, _ = await slotted_source(swarm, upstream, slots=2, upload_limit=64 * KiB)
    async with aiohttp.ClientSession() as session:
        hog = await session.get(f"{requesters.url}/0", headers=requesters.headers("hog"))  # ~32 s
        assert hog.status == 200
        async with session.get(f"{requesters.url}/0", headers=requesters.headers("hog")) as again:
            assert again.status == 429  # its share (half the slots) is taken: before, it took both
            assert "share" in (await again.json())["error"]["message"]
        async with asyncio.timeout(10):
            other = await session.get(f"{requesters.url}/0", headers=requesters.headers("other"))
        assert other.status == 200  # the other slot, at once
        other.close()
        hog.close()


async def test_a_head_on_a_piece_is_refused_and_takes_nothing(swarm, upstream):
    """A HEAD took an upload slot and, at the seed, one of its copies of the piece, with no
    byte sent (attack round 8): asked every second, it kept everyone on "ask again"."""
    requesters, data = await slotted_source(swarm, upstream, size=64 * KiB)
    async with aiohttp.ClientSession() as session:
        for url in (f"{requesters.url}/0", f"{requesters.url}/map"):
            async with session.head(url, headers=requesters.headers("header")) as resp:
                assert resp.status == 405
        async with session.get(f"{requesters.url}/0", headers=requesters.headers("other")) as resp:
            assert resp.status == 200 and await resp.read() == data


async def test_a_requester_that_stops_reading_loses_its_slot(swarm, upstream, monkeypatch):
    monkeypatch.setattr(listener, "SEND_STALL", 1.0)  # read when the source accepts a connection
    requesters, data = await slotted_source(swarm, upstream, 16 * MiB)  # past the socket buffers
    silent, read_on = await requesters.hold("silent")
    async with aiohttp.ClientSession() as session:
        async with asyncio.timeout(30):  # before: the slot was held for ever, this waited in line
            async with session.get(f"{requesters.url}/0", headers=requesters.headers("honest")) as resp:
                assert resp.status == 200
                assert await resp.read() == data
    read_on.set()
    async with asyncio.timeout(30):
        assert await silent < len(data)  # cut, not served


async def test_a_requester_that_trickles_loses_its_slot(swarm, upstream, monkeypatch):
    # Bytes the kernel took count for nothing: only what the requester took. Before, one
    # deadline for the whole piece (here 1 s + 16 MiB at 256 KiB/s: 65 s) let it keep
    # the slot for minutes at a fraction of the rate.
    monkeypatch.setattr(server, "SEND_FLOOR", 1.0)
    monkeypatch.setattr(server, "PACE_CHECK", 0.5)
    monkeypatch.setattr(server, "MIN_SEND_RATE", 256 * KiB)
    requesters, data = await slotted_source(swarm, upstream, 16 * MiB)
    trickle, _ = await requesters.hold("trickle", read_every=0.2)  # 2.5 kB/s: always some progress
    async with aiohttp.ClientSession() as session:
        async with asyncio.timeout(30):
            async with session.get(f"{requesters.url}/0", headers=requesters.headers("honest")) as resp:
                assert resp.status == 200
                assert await resp.read() == data
        async with asyncio.timeout(30):
            assert await trickle < len(data)


async def test_long_polls_are_capped_per_requester_and_in_all(swarm, upstream, monkeypatch):
    monkeypatch.setattr(server, "POLLS_PER_REQUESTER", 2)
    monkeypatch.setattr(listener, "parked_cap", lambda: 3)  # half a budget of 6
    requesters, _ = await slotted_source(swarm, upstream)
    poll = f"{requesters.url}/map?after=5&wait=30"

    async def ask(session, name):
        async with session.get(poll, headers=requesters.headers(name)) as resp:
            return resp.status

    async with aiohttp.ClientSession() as session:
        waiting = [asyncio.create_task(ask(session, "a")) for _ in range(2)]
        await asyncio.sleep(0.5)
        assert not any(t.done() for t in waiting)
        assert await ask(session, "a") == 429  # a third of its own
        waiting.append(asyncio.create_task(ask(session, "b")))
        await asyncio.sleep(0.5)
        assert not waiting[-1].done()  # another requester still waits
        assert await ask(session, "c") == 429  # half the connection budget waits in polls
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)


async def test_compressible_pieces_travel_as_zstd(swarm, upstream):
    data = compressible(4 * MiB)
    url = upstream.add("tar", data)
    await swarm.start_supernode(piece_size=256 * KiB, seed_upload_slots=1)
    (first,) = await swarm.add_peers(1)
    request = BlobRequest(url, Digest.of(data))
    await first.ensure(request).wait_complete()
    others = await swarm.add_peers(3)
    await asyncio.gather(*(p.ensure(request).wait_complete() for p in others))
    for peer in others:
        assert file_sha256(peer.config.data_dir / "blobs" / f"{request.task_id}.data") == str(request.digest)
    received = sum(
        metric(p, "swarmpull_peer_download_bytes_total", source=s) for p in others for s in ("peer", "seed")
    )
    wire = sum(
        metric(p, "swarmpull_peer_download_wire_bytes_total", source=s)
        for p in others
        for s in ("peer", "seed")
    )
    assert received == 3 * len(data)
    assert wire < received / 3  # this data compresses more than threefold
    saved = sum(
        metric(p, "swarmpull_peer_compression_saved_bytes_total", direction="download") for p in others
    )
    assert saved == received - wire


async def test_incompressible_pieces_and_refusing_peers_get_plain_bytes(swarm, upstream):
    random_data = os.urandom(2 * MiB)
    text = compressible(2 * MiB)
    urls = upstream.add("random", random_data), upstream.add("text", text)
    await swarm.start_supernode(piece_size=256 * KiB)
    (plain,) = await swarm.add_peers(1)
    await plain.ensure(BlobRequest(urls[0], Digest.of(random_data))).wait_complete()
    from swarmpull.edges.transport import TransportConfig

    (refuses,) = await swarm.add_peers(1, transport=TransportConfig(compression=False))
    await refuses.ensure(BlobRequest(urls[1], Digest.of(text))).wait_complete()
    for peer, size in ((plain, len(random_data)), (refuses, len(text))):
        wire = sum(
            metric(peer, "swarmpull_peer_download_wire_bytes_total", source=s) for s in ("peer", "seed")
        )
        assert wire == size
        assert metric(peer, "swarmpull_peer_compression_saved_bytes_total", direction="download") == 0


async def test_origin_connection_cap_holds_and_each_piece_is_read_once(swarm, upstream):
    blobs = [os.urandom(MiB) for _ in range(4)]
    urls = [upstream.add(f"layer{i}", b) for i, b in enumerate(blobs)]
    upstream.rate = 8 * MiB
    host = "127.0.0.1"
    await swarm.start_supernode(origin_limits=(OriginLimit(host, rate=64 * MiB, connections=1),))
    peers = await swarm.add_peers(3)
    requests = [BlobRequest(u, Digest.of(b)) for u, b in zip(urls, blobs, strict=True)]
    await asyncio.gather(*(p.ensure(r).wait_complete() for p in peers for r in requests))
    assert upstream.max_active == 1
    assert upstream.bytes_sent == sum(len(b) for b in blobs)


async def test_direct_fallbacks_are_capped_per_task(swarm, upstream):
    data = os.urandom(MiB)
    url = upstream.add("layer", data)
    upstream.faults["/layer"] = Fault(status=503, times=4)  # the supernode's four attempts
    from swarmpull.edges.origin import UpstreamConfig

    await swarm.start_supernode(direct_per_task=2, upstream=UpstreamConfig(attempts=4, retry_delay=0.01))
    peers = await swarm.add_peers(5)
    request = BlobRequest(url, Digest.of(data))
    outcomes = await asyncio.gather(
        *(p.ensure(request).wait_complete() for p in peers), return_exceptions=True
    )
    succeeded = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, DownloadFailed)]
    assert len(succeeded) == 2 and len(refused) == 3
    assert all("503" in str(o) for o in refused)
    assert sum(metric(p, "swarmpull_peer_direct_fallbacks_total") for p in peers) == 2
    assert upstream.requests["/layer"] == 4 + 2


async def test_binding_limits_make_transfers_wait(swarm, upstream):
    data = os.urandom(2 * MiB)
    url = upstream.add("layer", data)
    await swarm.start_supernode(piece_size=256 * KiB)
    (peer,) = await swarm.add_peers(1, download_limit=4 * MiB)
    await peer.ensure(BlobRequest(url, Digest.of(data))).wait_complete()
    assert metric(peer, "swarmpull_peer_limiter_wait_seconds_total", direction="download") > 0.2
