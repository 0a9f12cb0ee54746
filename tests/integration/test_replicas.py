"""Supernode replicas on a real Redis: a replica killed mid-transfer, Redis restarted
mid-run, leases fenced. Every peer must end with a verified blob, and the upstream must
send each byte once."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil

import aiohttp
import pytest
import redis.asyncio as aioredis

from peer.download import DownloadState
from supernode.cluster import Batch, NotOwner
from supernode.cluster.redis import INBOX_TTL_MS, RedisCluster, task_keys
from supernode.origin_limits import OriginLimit, OriginLimits, SharedOriginThrottle
from swarmpull.core.blobs import BlobRequest
from swarmpull.core.clock import SystemClock
from swarmpull.core.digest import Digest
from swarmpull.core.tasks import task_id_for
from tests.kit.peers import start_peer
from tests.kit.supernodes import RedisServer, SupernodeProcess

pytestmark = pytest.mark.skipif(
    not shutil.which("redis-server"), reason="needs redis-server (scripts/test installs it)"
)

KiB = 1024


@pytest.fixture
async def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def redis_client(redis_server):
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def start_replicas(tmp_path, redis_server, count: int) -> list[SupernodeProcess]:
    replicas = [
        SupernodeProcess(
            tmp_path / f"supernode{i}",
            "--redis",
            redis_server.url,
            "--piece-size",
            "32KiB",
            "--lease-ttl",
            "3",
        )
        for i in range(count)
    ]
    await asyncio.gather(*(r.start() for r in replicas))
    return replicas


async def until(check, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def pull_everywhere(tmp_path, replicas, upstream, peers: int, data: bytes):  # type: ignore[no-untyped-def]
    """Peers that know every replica (each starting at a different one), pulling at a
    throttled rate so the pull lasts several seconds; returns (daemons, downloads)."""
    urls = [r.url for r in replicas]
    daemons = []
    for i in range(peers):
        order = tuple(urls[i % len(urls) :] + urls[: i % len(urls)])
        daemons.append(
            await start_peer(tmp_path / f"peer{i}", order, download_limit=96 * KiB, fallback_grace=120.0)
        )
    request = BlobRequest(upstream.url_of("layer"), Digest.parse(upstream.digest_of(data)))
    return daemons, [d.ensure(request) for d in daemons]


async def check_every_copy(daemons, downloads, data: bytes) -> None:  # type: ignore[no-untyped-def]
    await asyncio.wait_for(asyncio.gather(*(d.wait_complete() for d in downloads)), 90)
    for daemon, download in zip(daemons, downloads, strict=True):
        assert download.state is DownloadState.COMPLETE
        assert not download.direct  # through the swarm, never straight to the upstream
        blob = daemon.store.get(download.task_id)
        assert hashlib.sha256(blob.read(0, len(data))).digest() == hashlib.sha256(data).digest()


async def test_a_replica_killed_mid_transfer_hands_its_task_over(
    tmp_path, upstream, redis_server, redis_client
):
    data = os.urandom(512 * KiB)  # 16 pieces of 32 KiB
    upstream.add("layer", data)
    replicas = await start_replicas(tmp_path, redis_server, 3)
    daemons = []
    try:
        daemons, downloads = await pull_everywhere(tmp_path, replicas, upstream, 6, data)
        task_id = task_id_for(upstream.url_of("layer"), Digest.parse(upstream.digest_of(data)))
        lease_key, _, sha_key, *_ = task_keys(task_id)

        async def read_and_recorded() -> bool:  # every piece read from upstream, in Redis
            return await redis_client.hlen(sha_key) == 16

        await until(read_and_recorded)
        owner_url = (await redis_client.get(lease_key)).decode().partition(" ")[2]
        owner = next(r for r in replicas if r.url == owner_url)
        assert not any(d.state is DownloadState.COMPLETE for d in downloads)  # mid-transfer
        await owner.kill()

        await check_every_copy(daemons, downloads, data)
        # Each byte once across the takeover, and one proof of pull rights at most: a task
        # the successor took over counts as private (it did not see the read that made it
        # public), so the openers prove theirs, once for their one credential. It holds
        # the first piece's sha256, not its bytes (those are with the peers): the proof
        # is that piece.
        assert len(data) <= upstream.bytes_sent <= len(data) + 32 * KiB
        assert upstream.reads["/layer"] <= 2
        successor = (await redis_client.get(lease_key)).decode().partition(" ")[2]
        assert successor in {r.url for r in replicas} - {owner_url}
    finally:
        for daemon in daemons:
            await daemon.stop()
        for replica in replicas:
            await replica.stop()


async def test_a_redis_restart_mid_run_loses_nothing(tmp_path, upstream, redis_server, redis_client):
    data = os.urandom(384 * KiB)
    upstream.add("layer", data)
    replicas = await start_replicas(tmp_path, redis_server, 2)
    daemons = []
    try:
        daemons, downloads = await pull_everywhere(tmp_path, replicas, upstream, 4, data)
        task_id = task_id_for(upstream.url_of("layer"), Digest.parse(upstream.digest_of(data)))

        async def started() -> bool:
            return await redis_client.exists(task_keys(task_id)[0]) == 1

        await until(started)
        await redis_server.stop()
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{replicas[0].url}/readyz") as resp:
                assert resp.status == 503  # not ready: a load balancer sends peers elsewhere
                assert (await resp.json())["redis"] == "unreachable"
            async with session.get(f"{replicas[0].url}/healthz") as resp:
                assert resp.status == 200  # but alive: a restart would not bring Redis back
                assert (await resp.json())["redis"] == "unreachable"
            await redis_server.start()
            async with session.get(f"{replicas[0].url}/readyz") as resp:
                assert resp.status == 200

        await check_every_copy(daemons, downloads, data)
        assert upstream.bytes_sent == len(data)
    finally:
        for daemon in daemons:
            await daemon.stop()
        for replica in replicas:
            await replica.stop()


def connect(redis_url: str, name: str) -> RedisCluster:
    origins = OriginLimits([], SystemClock())
    return RedisCluster(
        RedisCluster.client(redis_url, None), name, 5.0, asyncio.get_running_loop().time, origins
    )


async def test_a_burst_of_commands_waits_for_a_connection_instead_of_failing(redis_server):
    # A surge's opens at a replica that does not own their tasks are a claim each, at once.
    cluster = connect(redis_server.url, "http://first")
    try:
        owners = await asyncio.gather(*(cluster.owner(f"sha256-{i:064x}") for i in range(500)))
        assert owners == [None] * 500  # before: past 100 at once, "Too many connections"
    finally:
        await cluster.close()


async def test_a_replica_that_lost_its_lease_cannot_write(redis_server, redis_client):
    first = connect(redis_server.url, "http://first")
    second = connect(redis_server.url, "http://second")
    try:
        lease = await first.claim("sha256-" + "a" * 64)
        with pytest.raises(NotOwner) as refused:
            await second.claim("sha256-" + "a" * 64)
        assert refused.value.owner == "http://first"

        await redis_client.delete(task_keys("sha256-" + "a" * 64)[0])  # the lease expired
        taken = await second.claim("sha256-" + "a" * 64)
        assert taken.token != lease.token  # a new epoch

        late = Batch(meta={"size": "1", "piece_size": "1"}, sha={0: "f" * 64})
        assert await first.write({"sha256-" + "a" * 64: (lease, late)}) == {"sha256-" + "a" * 64}
        assert await first.load("sha256-" + "a" * 64) is None  # fenced: nothing written

        batch = Batch(meta={"size": "3", "piece_size": "1"}, sha={0: "0" * 64}, staged={0: b"x"})
        batch.holders.update(p1="Bg==", p2="BA==")
        batch.keys.add("k" * 44)
        assert await second.write({"sha256-" + "a" * 64: (taken, batch)}) == set()
        gone = Batch(holders={"p2": None})
        assert await second.write({"sha256-" + "a" * 64: (taken, gone)}) == set()
        record = await second.load("sha256-" + "a" * 64)
        assert (record.size, record.piece_size, record.sha, record.staged) == (3, 1, {0: "0" * 64}, {0: b"x"})
        assert record.holders == {"p1": "Bg=="} and record.keys == ["k" * 44]
    finally:
        await first.close()
        await second.close()


def test_an_unwritten_batch_goes_before_the_newer_one():
    older = Batch(sha={0: "a"}, staged={0: b"0", 1: b"1"}, holders={"p": "AQ==", "q": "AQ=="})
    newer = Batch(unstaged={1}, holders={"q": "Aw=="})
    older.merge_into(newer)
    assert newer.sha == {0: "a"}
    assert newer.staged == {0: b"0"}  # piece 1 found a holder since: not staged again
    assert newer.holders == {"p": "AQ==", "q": "Aw=="}  # the newer report of q wins

    reset = Batch(reset=True)
    older.merge_into(reset)
    assert reset.sha == {} and reset.holders == {}  # wrong bytes: nothing older survives


async def test_origin_limits_hold_across_replicas(redis_server):
    clients = [RedisCluster.client(redis_server.url, None) for _ in range(2)]
    limit = OriginLimit("registry.example", rate=100_000, connections=1)
    first, second = (
        SharedOriginThrottle(limit, SystemClock(), client, f"http://replica{i}")
        for i, client in enumerate(clients)
    )
    try:
        async with first.connection():
            assert not await second._take_connection("other", 1)  # the one connection is taken
            entered = asyncio.Event()

            async def queue() -> None:
                async with second.connection():
                    entered.set()

            waiting = asyncio.create_task(queue())
            await asyncio.sleep(0.3)
            assert not entered.is_set()  # the second replica waits for the first's connection
        await asyncio.wait_for(waiting, 5)
        assert entered.is_set()

        # One bucket for both, 100 kB/s: after the first takes a second's worth, the
        # second's take puts the bucket in debt and it must wait most of a second.
        loop = asyncio.get_running_loop()
        await first.acquire(100_000)
        started = loop.time()
        await second.acquire(100_000)
        assert 0.5 < loop.time() - started <= 1.5
    finally:
        for client in clients:
            await client.aclose()


async def test_a_replica_killed_mid_read_hands_over_and_the_successor_resumes_with_a_range(
    tmp_path, upstream, redis_server, redis_client
):
    data = os.urandom(1024 * KiB)  # 32 pieces of 32 KiB, read at 256 KiB/s: four seconds
    upstream.add("layer", data)
    upstream.rate = 256 * KiB
    replicas = await start_replicas(tmp_path, redis_server, 2)
    daemons = []
    try:
        daemons, downloads = await pull_everywhere(tmp_path, replicas, upstream, 4, data)
        task_id = task_id_for(upstream.url_of("layer"), Digest.parse(upstream.digest_of(data)))
        lease_key, _, sha_key, *_ = task_keys(task_id)

        async def a_quarter_read() -> bool:  # staged as they are verified, not all at the end
            return await redis_client.hlen(sha_key) >= 8

        await until(a_quarter_read)
        owner_url = (await redis_client.get(lease_key)).decode().partition(" ")[2]
        owner = next(r for r in replicas if r.url == owner_url)
        assert await redis_client.hlen(sha_key) < 32  # mid-read
        await owner.kill()

        await check_every_copy(daemons, downloads, data)
        assert upstream.requests["/layer"] >= 2  # the successor read again...
        # ...from where the owner stopped: lost are at most the bytes in flight when it died
        # (the upstream's last write, 64 KiB, and the piece being filled); a read from the
        # start would cost the 8 or more pieces already read.
        assert upstream.bytes_sent <= len(data) + 64 * KiB + 32 * KiB
    finally:
        for daemon in daemons:
            await daemon.stop()
        for replica in replicas:
            await replica.stop()


async def test_events_go_only_to_the_inboxes_of_owned_tasks(redis_server, redis_client):
    # Anyone can name a task (a heartbeat's dropped tasks, a registration's holdings): an
    # inbox for a task nobody owns would never be taken, a key left behind for each name.
    replica = connect(redis_server.url, "http://replica")
    owned, made_up = "sha256-" + "b" * 64, [f"sha256-{i:064x}" for i in range(500)]
    try:
        await replica.claim(owned)
        await replica.post([(t, {"peer": "p", "dropped": True}) for t in [owned, *made_up]])
        keys = {k.decode() async for k in redis_client.scan_iter("*inbox*")}
        assert len(keys) == 1  # the owned task's inbox, and no other
        (inbox,) = keys
        assert 0 < await redis_client.pttl(inbox) <= INBOX_TTL_MS
        assert await replica.take_inbox([owned]) == {owned: [{"peer": "p", "dropped": True}]}
    finally:
        await replica.close()
