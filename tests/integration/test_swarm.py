"""Many peers pulling one blob over loopback through a supernode: bytes, counts, faults."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import pytest

from loadtest.origin_server import Fault
from supernode.scheduler import SourceState
from swarmpull.core.bitfield import full, to_text
from swarmpull.core.blobs import BlobRequest, DownloadFailed
from swarmpull.core.digest import Digest
from swarmpull.core.protocol import API, Holding, PeerRegistration
from swarmpull.core.signing import STATEMENT_SIZE
from swarmpull.edges.metrics import sample
from tests.integration.conftest import downloaded, file_sha256, pieces
from tests.kit.peers import PeerProcess

KiB, MiB = 1024, 1024 * 1024


def blob_path(peer, task_id):
    return peer.config.data_dir / "blobs" / f"{task_id}.data"


async def test_twelve_peers_share_one_upstream_read(swarm, upstream):
    data = os.urandom(12 * MiB)
    url = upstream.add("layer", data)
    upstream.rate = 24 * MiB
    supernode = await swarm.start_supernode(piece_size=256 * KiB, seed_upload_slots=2)
    peers = await swarm.add_peers(12)
    request = BlobRequest(url, Digest.of(data))
    downloads = [peer.ensure(request) for peer in peers]
    await asyncio.gather(*(d.wait_complete() for d in downloads))

    for peer in peers:
        assert file_sha256(blob_path(peer, request.task_id)) == str(request.digest)
    assert upstream.bytes_sent == len(data)  # each byte left the upstream once
    assert upstream.requests["/layer"] == 1
    from_peers, from_seed = downloaded(peers, "peer"), downloaded(peers, "seed")
    assert from_peers + from_seed == 12 * len(data)
    assert from_peers > 2 * from_seed  # the peers fed each other
    # Every byte taken from the seed was sent by it (and a transfer given up mid-way, on
    # a loaded machine, was sent in part without being taken).
    assert sample(supernode.metrics.registry, "swarmpull_supernode_seed_upload_bytes_total") >= from_seed


async def test_same_digest_from_two_urls_is_one_task(swarm, upstream):
    data = os.urandom(2 * MiB)
    first, second = upstream.add("a/layer", data), upstream.add("b/layer", data)
    supernode = await swarm.start_supernode()
    peers = await swarm.add_peers(4)
    digest = Digest.of(data)
    downloads = [p.ensure(BlobRequest(first if i % 2 else second, digest)) for i, p in enumerate(peers)]
    await asyncio.gather(*(d.wait_complete() for d in downloads))
    assert len(supernode.service.tasks) == 1
    assert upstream.bytes_sent == len(data)


async def test_corrupt_peer_is_quarantined_and_routed_around(swarm, upstream):
    data = os.urandom(4 * MiB)
    url = upstream.add("layer", data)
    supernode = await swarm.start_supernode(piece_size=64 * KiB, seed_upload_slots=1)
    (bad,) = await swarm.add_peers(1)
    request = BlobRequest(url, Digest.of(data))
    await bad.ensure(request).wait_complete()
    with open(blob_path(bad, request.task_id), "r+b") as f:  # its disk rots under it
        for offset in range(1000, len(data), 64 * KiB):
            f.seek(offset)
            f.write(b"\x00\xff")

    peers = await swarm.add_peers(6)
    await asyncio.gather(*(p.ensure(request).wait_complete() for p in peers))
    for peer in peers:
        assert file_sha256(blob_path(peer, request.task_id)) == str(request.digest)
    assert supernode.service.scheduler.state(bad.peer_id) is SourceState.QUARANTINED
    assert 1 <= pieces(peers, "corrupt") <= 6 * 8  # at most what was in flight from it

    late = await swarm.add_peers(3)
    await asyncio.gather(*(p.ensure(request).wait_complete() for p in late))
    assert pieces(late, "corrupt") == 0  # nobody is sent to it any more


async def test_killed_peer_does_not_stop_the_others(swarm, upstream, tmp_path):
    data = os.urandom(8 * MiB)
    url = upstream.add("layer", data)
    upstream.rate = 4 * MiB
    supernode = await swarm.start_supernode(
        piece_size=128 * KiB, heartbeat_interval=0.5, scheduler={"peer_timeout": 3.0}
    )
    request = BlobRequest(url, Digest.of(data))
    victim = PeerProcess(tmp_path / "victim", supernode.url)
    await victim.start()
    pulling = asyncio.create_task(_pull_through_api(victim.api_url, url, data))
    others = await swarm.add_peers(6)
    downloads = [p.ensure(request) for p in others]
    scheduler = supernode.service.scheduler
    log = tmp_path / "victim" / "blobs" / f"{request.task_id}.pieces"
    while not log.exists() or log.stat().st_size < 4 * STATEMENT_SIZE:  # it holds pieces to serve
        await asyncio.sleep(0.02)
    await victim.kill()
    await asyncio.gather(*(d.wait_complete() for d in downloads))
    for peer in others:
        assert file_sha256(blob_path(peer, request.task_id)) == str(request.digest)
    with pytest.raises(aiohttp.ClientPayloadError):
        await pulling
    while scheduler.knows_peer(_victim_id(victim)):  # dropped: reported unreachable, or silent
        await asyncio.sleep(0.1)
    assert upstream.bytes_sent == len(data)


async def test_restarted_peer_resumes_without_refetching(swarm, upstream, tmp_path):
    data = os.urandom(8 * MiB)
    url = upstream.add("layer", data)
    upstream.rate = 4 * MiB
    piece = 128 * KiB
    supernode = await swarm.start_supernode(piece_size=piece)
    request = BlobRequest(url, Digest.of(data))
    victim = PeerProcess(tmp_path / "victim", supernode.url)
    await victim.start()
    pulling = asyncio.create_task(_pull_through_api(victim.api_url, url, data))
    log = tmp_path / "victim" / "blobs" / f"{request.task_id}.pieces"
    while not log.exists() or log.stat().st_size < 20 * STATEMENT_SIZE:  # 20 verified pieces
        await asyncio.sleep(0.05)
    await victim.kill()
    with pytest.raises(aiohttp.ClientPayloadError):
        await pulling
    held = log.stat().st_size // STATEMENT_SIZE
    assert held < len(data) // piece

    restarted = PeerProcess(tmp_path / "victim", supernode.url)
    await restarted.start()
    await _pull_through_api(restarted.api_url, url, data)
    fetched = sum(
        [await restarted.metric("swarmpull_peer_download_bytes_total", source=s) for s in ("peer", "seed")]
    )
    assert fetched <= len(data) - held * piece
    assert fetched >= len(data) - (held + 1) * piece  # at most the piece being written was lost
    await restarted.stop()


async def test_upstream_cut_mid_stream_resumes_with_a_range_request(swarm, upstream):
    data = os.urandom(3 * MiB)
    url = upstream.add("layer", data)
    from loadtest.origin_server import Fault

    upstream.faults["/layer"] = Fault(cut_after=MiB + 1000)
    await swarm.start_supernode(piece_size=256 * KiB)
    peers = await swarm.add_peers(3)
    request = BlobRequest(url, Digest.of(data))
    await asyncio.gather(*(p.ensure(request).wait_complete() for p in peers))
    assert upstream.requests["/layer"] == 2
    # Only the torn piece is read twice: the bytes of it that came before the cut, and
    # at most one piece more (bytes the client buffered but had not handed on when the
    # connection broke are lost with it; pieces are hashed off the event loop).
    assert len(data) + 1000 <= upstream.bytes_sent <= len(data) + 1000 + 256 * KiB


async def test_lying_upstream_never_completes_anywhere(swarm, upstream):
    from loadtest.origin_server import Fault

    data = os.urandom(2 * MiB)
    url = upstream.add("layer", data)
    upstream.faults["/layer"] = Fault(corrupt=True)
    supernode = await swarm.start_supernode(piece_size=256 * KiB)
    peers = await swarm.add_peers(4)
    request = BlobRequest(url, Digest.of(data))
    downloads = [p.ensure(request) for p in peers]
    for download in downloads:
        with pytest.raises(DownloadFailed, match="digest"):
            await download.wait_complete()
    assert upstream.requests["/layer"] == 1  # a wrong digest is not retried
    assert supernode.store.get(request.task_id) is None
    for peer in peers:
        blob = peer.store.get(request.task_id)
        assert blob is None or not blob.complete


async def test_upstream_404_reaches_the_caller_without_a_stampede(swarm, upstream):
    await swarm.start_supernode()
    peers = await swarm.add_peers(5)
    url = upstream.url_of("missing")
    downloads = [p.ensure(BlobRequest(url, Digest.of(b"x"))) for p in peers]
    for download in downloads:
        with pytest.raises(DownloadFailed, match="404") as caught:
            await download.wait_ready()
        assert caught.value.status == 404
    assert upstream.requests["/missing"] == 1


async def test_no_supernode_means_a_verified_direct_download(swarm, upstream, tmp_path):
    data = os.urandom(3 * MiB)
    url = upstream.add("layer", data)
    (peer,) = await swarm.add_peers(1, supernodes=("http://127.0.0.1:9",))  # nothing listens
    request = BlobRequest(url, Digest.of(data))
    download = peer.ensure(request)
    await download.wait_complete()
    assert download.direct
    assert file_sha256(blob_path(peer, request.task_id)) == str(request.digest)
    assert sample(peer.metrics.registry, "swarmpull_peer_direct_fallbacks_total") == 1
    assert downloaded([peer], "upstream") == len(data)

    wrong = BlobRequest(upstream.add("other", os.urandom(MiB)), Digest.of(b"something else"))
    with pytest.raises(DownloadFailed, match="digest"):
        await peer.ensure(wrong).wait_complete()
    assert peer.store.get(wrong.task_id) is None  # nothing of it is kept


async def test_supernode_lost_mid_download_falls_back_to_upstream(swarm, upstream):
    data = os.urandom(6 * MiB)
    url = upstream.add("layer", data)
    upstream.rate = 6 * MiB
    supernode = await swarm.start_supernode(piece_size=128 * KiB)
    peers = await swarm.add_peers(2, fallback_grace=1.0, request_timeout=1.0)
    request = BlobRequest(url, Digest.of(data))
    downloads = [p.ensure(request) for p in peers]
    while not any(d.blob is not None and d.blob.verified_count >= 5 for d in downloads):
        await asyncio.sleep(0.05)
    await supernode.stop()
    swarm.supernode = None
    await asyncio.gather(*(d.wait_complete() for d in downloads))
    for peer, download in zip(peers, downloads, strict=True):
        assert download.direct
        assert file_sha256(blob_path(peer, request.task_id)) == str(request.digest)


async def test_upstream_credentials_stay_in_memory(swarm, upstream, caplog, tmp_path):
    from loadtest.origin_server import Fault

    caplog.set_level("DEBUG")
    secret = "s3cr3t-t0ken-4f9a"
    data = os.urandom(MiB)
    url = upstream.add("private", data)
    upstream.faults["/private"] = Fault(token=secret)
    supernode = await swarm.start_supernode(data_dir=tmp_path / "supernode")
    peers = await swarm.add_peers(3)
    request = BlobRequest(url, Digest.of(data), {"Authorization": f"Bearer {secret}"})
    await asyncio.gather(*(p.ensure(request).wait_complete() for p in peers))
    status_url = f"{supernode.url}/api/v1/tasks/{request.task_id}"
    async with aiohttp.ClientSession() as session, session.get(status_url) as resp:
        assert secret not in await resp.text()
    assert secret not in caplog.text
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.suffix != ".data":
            assert secret.encode() not in path.read_bytes(), path


async def _pull_through_api(api_url: str, url: str, data: bytes) -> None:
    body = {"url": url, "digest": str(Digest.of(data))}
    async with aiohttp.ClientSession() as session, session.post(f"{api_url}/api/v1/fetch", json=body) as resp:
        assert resp.status == 200
        assert await resp.read() == data


def _victim_id(victim: PeerProcess) -> str:
    return (victim.data_dir / "peer-id").read_text().strip()


async def test_supernode_restart_loses_nothing(swarm, upstream, tmp_path):
    from loadtest.services import free_port
    from supernode.capabilities import PROOF_SPAN
    from swarmpull.edges.http import HostPort
    from tests.kit.supernodes import start_supernode

    data = os.urandom(4 * MiB)
    url = upstream.add("layer", data)
    listen = HostPort("127.0.0.1", free_port())
    settings = {
        "listen": listen,
        "data_dir": tmp_path / "sn",
        "piece_size": 256 * KiB,
        "heartbeat_interval": 0.3,
    }
    await swarm.start_supernode(**settings)
    first = await swarm.add_peers(3)
    request = BlobRequest(url, Digest.of(data))
    await asyncio.gather(*(p.ensure(request).wait_complete() for p in first))
    await swarm.supernode.stop()

    swarm.supernode = await start_supernode(**settings)  # same address, same seed cache
    scheduler = swarm.supernode.service.scheduler
    # The first peers' next heartbeat is refused (UNKNOWN_PEER): they register again and
    # announce what they hold, which the supernode knows from its seed cache.
    async with asyncio.timeout(10):
        while not all(scheduler.knows_peer(p.peer_id) for p in first):
            await asyncio.sleep(0.05)
    for peer in first:
        assert scheduler.holdings(request.task_id)[peer.peer_id] == (1 << 16) - 1
    late = await swarm.add_peers(3)
    await asyncio.gather(*(p.ensure(request).wait_complete() for p in late))
    # The seed cache survived: no second read. A restored task does not know whether it
    # is public (the read that would say is gone): the late peers prove their pull rights,
    # with one proof for the three, as they come with the same URL and no credentials.
    assert upstream.bytes_sent == len(data) + PROOF_SPAN


async def test_a_stopping_daemon_starts_no_download(swarm, upstream):
    """A pull asked for while the daemon stops (its listeners still up) fails at once as
    the daemon's stop, instead of running on sessions that are closing under it."""
    data, other = os.urandom(2 * MiB), os.urandom(2 * MiB)
    upstream.rate = 256 * KiB  # the first pull still runs when the daemon stops
    first = BlobRequest(upstream.add("slow", data), Digest.of(data))
    late = BlobRequest(upstream.add("late", other), Digest.of(other))
    await swarm.start_supernode()
    (peer,) = await swarm.add_peers(1)
    running = peer.ensure(first)
    stopping = asyncio.create_task(peer.stop())
    await asyncio.sleep(0)  # the stop is cancelling the first pull
    assert not stopping.done()
    asked = peer.ensure(late)
    await stopping
    for download in (running, asked):
        with pytest.raises(DownloadFailed, match="the daemon is stopping") as failed:
            async with asyncio.timeout(30):  # before: the late pull hung for ever
                await download.wait_complete()
        assert failed.value.stopping
    assert upstream.requests.get("/late", 0) == 0


async def test_a_preheat_poll_makes_no_source_of_a_blob_no_preheat_gave(swarm, upstream):
    """A node's preheat poll saying "complete" for a blob no preheat gave it is not taken
    as a holding: it would make the node a source of the blob for every requester."""
    data = os.urandom(MiB)
    request = BlobRequest(upstream.add("layer", data), Digest.of(data))
    supernode = await swarm.start_supernode()
    holder, claimer = await swarm.add_peers(2)
    await holder.ensure(request).wait_complete()
    before = supernode.service.scheduler.holders(request.task_id, 0)
    poll = {"progress": [{"task_id": request.task_id, "state": "complete", "done": len(data)}]}
    url = f"{supernode.url}{API}/peers/{claimer.peer_id}/preheat"
    async with aiohttp.ClientSession() as session, session.post(url, json=poll) as resp:
        assert resp.status == 200, await resp.text()
    assert supernode.service.scheduler.holders(request.task_id, 0) == before  # before: one more


async def test_a_registration_claiming_a_private_blob_makes_no_member_of_a_stranger(swarm, upstream):
    """A node that names a private blob's digest and geometry among its holdings at
    registration, never let in, is no holder, so no parent of it: requesters would have
    come to it with their capabilities (who pulls the image), and the seed's ration would
    count it as a copy."""
    data = os.urandom(MiB)
    url = upstream.add("private/layer", data)
    upstream.faults["/private/layer"] = Fault(token="t0k3n")
    request = BlobRequest(url, Digest.of(data), {"Authorization": "Bearer t0k3n"})
    supernode = await swarm.start_supernode()
    (holder,) = await swarm.add_peers(1)
    await holder.ensure(request).wait_complete()
    task = supernode.service.tasks[request.task_id]
    before = supernode.service.scheduler.holders(request.task_id, 0)
    count = task.blob.geometry.count
    claim = Holding(request.task_id, len(data), task.blob.meta.piece_size, to_text(full(count), count))
    registration = PeerRegistration("stranger", "http://127.0.0.1:9", 8, holdings=[claim])
    url = f"{supernode.url}{API}/peers"
    async with aiohttp.ClientSession() as session, session.post(url, json=registration.to_json()) as resp:
        assert resp.status == 200, await resp.text()
    assert supernode.service.scheduler.holders(request.task_id, 0) == before  # before: one more
