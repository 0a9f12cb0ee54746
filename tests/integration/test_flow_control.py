"""Flow control over loopback: upload slots, zstd on the wire, origin caps, fallbacks.

Rates themselves are measured by `swarmpull benchmarks limits`, not asserted here: these
tests check counts and bytes.
"""

from __future__ import annotations

import asyncio
import os

import aiohttp

from loadtest.origin_server import Fault
from supernode.origin_limits import OriginLimit
from swarmpull.core.blobs import BlobRequest, DownloadFailed
from swarmpull.core.capability import CAPABILITY_HEADER
from swarmpull.core.digest import Digest
from swarmpull.edges.http import PEER_HEADER
from swarmpull.edges.metrics import sample
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
    data = os.urandom(MiB)
    url = upstream.add("layer", data)
    supernode = await swarm.start_supernode(piece_size=MiB)
    (source,) = await swarm.add_peers(1, upload_slots=1, upload_limit=64 * KiB)
    request = BlobRequest(url, Digest.of(data))
    await source.ensure(request).wait_complete()
    piece_url = f"{source.address}/pieces/{request.task_id}/0"
    capability = supernode.service.capabilities.own(request.task_id)  # any, on a cluster without TLS
    assert capability is not None

    def as_peer(name: str) -> dict[str, str]:
        return {PEER_HEADER: name, CAPABILITY_HEADER: capability}

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
