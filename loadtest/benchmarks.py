"""``swarmpull benchmarks``: measured figures for docs/BENCHMARKS.md.

- ``limits``: achieved upload and download rates against the set limits, over real
  loopback transfers through the production piece server and transport, with 1 to 32
  concurrent transfers; the rate is read every 50 ms and reported over every 2-second
  window (the limits promise to hold within 10 % over any such window).
- ``zstd``: an uncompressed-tar image (Python's own library, tarred) through a small
  swarm whose upload limits bind, with and without zstd: wire bytes and completion time.
- ``scheduler``: assignments per second through the supernode's service (its sync path,
  without HTTP) for 1000 peers on one task, with state in memory and with replicas on a
  local redis-server (write-through every tick, as in production).
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from loadtest.origin_server import BlobServer
from loadtest.services import RedisServer
from peer.config import PeerConfig
from peer.daemon import PeerDaemon
from supernode.config import SupernodeConfig
from supernode.server import Supernode
from swarmpull.core.blobs import BlobRequest
from swarmpull.core.digest import Digest
from swarmpull.core.protocol import OpenTask, PeerRegistration, SyncRequest
from swarmpull.core.rates import Priority
from swarmpull.core.units import format_size
from swarmpull.edges.http import HostPort, start_site
from swarmpull.edges.metrics import sample
from swarmpull.edges.ratelimit import RateLimiter
from swarmpull.edges.store import BlobMeta, PieceStore
from swarmpull.edges.transport import HttpPieceTransport, PieceServer, TransferCounters

MB = 1000**2
LOOPBACK = HostPort("127.0.0.1", 0)


# --------------------------------------------------------------------- limits


class RateProbe:
    """Reads a byte counter every 50 ms; reports rates over sliding 2-second windows."""

    def __init__(self, read: Callable[[], float]) -> None:
        self._read = read
        self.samples: list[tuple[float, float]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            self.samples.append((time.monotonic(), self._read()))
            await asyncio.sleep(0.05)

    def windows(self, width: float = 2.0) -> list[float]:
        rates = []
        j = 0
        for i, (t0, b0) in enumerate(self.samples):
            while j < len(self.samples) and self.samples[j][0] < t0 + width:
                j += 1
            if j >= len(self.samples):
                break
            t1, b1 = self.samples[j - 1] if j - 1 > i else self.samples[j]
            if t1 - t0 >= width * 0.95:
                rates.append((b1 - b0) / (t1 - t0))
        return rates


class CountingLimiter(RateLimiter):
    """A limiter that also counts the bytes it let through: what crossed the wire."""

    passed = 0

    async def acquire(self, count: int, priority: Priority = Priority.FOREGROUND) -> None:
        await super().acquire(count, priority)
        self.passed += count


async def _piece_source(root: Path, limiter: RateLimiter, size: int) -> tuple[web.AppRunner, str, str]:
    """A piece server holding one verified blob of random bytes."""
    store = PieceStore(root)
    store.load()
    data = os.urandom(size)
    blob = store.create(BlobMeta(f"sha256-{Digest.of(data).hex}", size, 1 << 20))
    for piece in range(blob.geometry.count):
        writer = blob.writer(piece)
        writer.write(data[piece << 20 : (piece + 1) << 20])
        writer.commit(None)
    counters = TransferCounters(CollectorRegistry(), "bench")
    server = PieceServer(store, counters, limiter, slots=None, compression=False)
    app = web.Application()
    app.add_routes(server.routes())
    runner, bound = await start_site(app, LOOPBACK)
    return runner, bound.url(), blob.task_id


async def _pull_loop(
    transport: HttpPieceTransport,
    sources: list[tuple[str, str]],
    stop: asyncio.Event,
    pieces: int,
    index: int,
) -> None:
    """Fetch pieces round-robin until told to stop; bytes land in a throwaway store."""
    root = Path(tempfile.mkdtemp(prefix="swarmpull-bench-sink-"))
    store = PieceStore(root)
    try:
        n = index
        while not stop.is_set():
            address, task_id = sources[n % len(sources)]
            blob = store.create(BlobMeta(task_id, pieces << 20, 1 << 20))
            piece = n % pieces
            if blob.is_verified(piece):
                store.remove(task_id)
                continue
            await transport.fetch(address, task_id, piece, blob.writer(piece))
            n += 1
    finally:
        store.close()
        shutil.rmtree(root, ignore_errors=True)


async def bench_limit(direction: str, rate: int, transfers: int, seconds: float) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="swarmpull-bench-"))
    runners = []
    stop = asyncio.Event()
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)
    try:
        # Upload: one limited source, many requesters. Download: one limited requester
        # pulling from four unlimited sources.
        measured = CountingLimiter(rate)
        sources = []
        for i in range(1 if direction == "upload" else 4):
            limiter = measured if direction == "upload" else RateLimiter(None)
            runner, url, task_id = await _piece_source(root / f"src{i}", limiter, 32 << 20)
            runners.append(runner)
            sources.append((url, task_id))
        client_limiter = measured if direction == "download" else None
        transport = HttpPieceTransport(session, "bench", limiter=client_limiter)
        probe = RateProbe(lambda: measured.passed)
        probe.start()
        pulls = [asyncio.create_task(_pull_loop(transport, sources, stop, 32, i)) for i in range(transfers)]
        await asyncio.sleep(seconds)
        stop.set()
        await probe.stop()
        for pull in pulls:
            pull.cancel()
        await asyncio.gather(*pulls, return_exceptions=True)
        rates = probe.windows(2.0)
        (t0, b0), (t1, b1) = probe.samples[0], probe.samples[-1]
        return {"set": rate, "mean": (b1 - b0) / (t1 - t0), "min_2s": min(rates), "max_2s": max(rates)}
    finally:
        await session.close()
        for runner in runners:
            await runner.cleanup()
        shutil.rmtree(root, ignore_errors=True)


async def run_limits(seconds: float) -> str:
    lines = [
        "limits: achieved rate over every 2-second window, real loopback transfers",
        f"  {'direction':<10}{'set':>12}{'transfers':>11}{'mean':>12}"
        f"{'min 2s':>12}{'max 2s':>12}{'peak/set':>10}",
    ]
    for direction in ("upload", "download"):
        for rate, transfers in ((10 * MB, 1), (10 * MB, 8), (10 * MB, 32), (50 * MB, 8)):
            r = await bench_limit(direction, rate, transfers, seconds)
            lines.append(
                f"  {direction:<10}{_mbps(rate):>12}{transfers:>11}{_mbps(r['mean']):>12}"
                f"{_mbps(r['min_2s']):>12}{_mbps(r['max_2s']):>12}{r['max_2s'] / rate:>10.3f}"
            )
    return "\n".join(lines)


def _mbps(rate: float) -> str:
    return f"{rate / MB:.2f} MB/s"


# ----------------------------------------------------------------------- zstd


def uncompressed_tar(limit: int) -> bytes:
    """An uncompressed tar of this Python's standard library, cut at ``limit`` bytes."""
    buffer = io.BytesIO()
    stdlib = Path(os.__file__).parent
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(stdlib.rglob("*.py")):
            if buffer.tell() > limit:
                break
            tar.add(path, arcname=str(path.relative_to(stdlib)))
    return buffer.getvalue()[:limit]


async def _zstd_run(data: bytes, nodes: int, limit: int, compression: bool) -> tuple[float, float]:
    from swarmpull.edges.transport import TransportConfig

    root = Path(tempfile.mkdtemp(prefix="swarmpull-bench-zstd-"))
    upstream = BlobServer()
    supernode = Supernode(
        SupernodeConfig(listen=LOOPBACK, data_dir=root / "sn", piece_size=1 << 20, seed_upload_limit=limit)
    )
    peers: list[PeerDaemon] = []
    try:
        await upstream.start()
        url = upstream.add("layer.tar", data)
        await supernode.start()
        for i in range(nodes):
            peer = PeerDaemon(
                PeerConfig(
                    data_dir=root / f"p{i}",
                    supernodes=(supernode.url,),
                    listen=LOOPBACK,
                    api_listen=None,
                    cache_size=None,
                    upload_limit=limit,
                    download_limit=None,
                    transport=TransportConfig(compression=compression),
                )
            )
            await peer.start()
            peers.append(peer)
        request = BlobRequest(url, Digest.of(data))
        start = time.monotonic()
        await asyncio.gather(*(p.ensure(request).wait_complete() for p in peers))
        elapsed = time.monotonic() - start
        wire = sum(
            sample(p.metrics.registry, "swarmpull_peer_download_wire_bytes_total", source=s)
            for p in peers
            for s in ("peer", "seed")
        )
        return wire, elapsed
    finally:
        for peer in peers:
            await peer.stop()
        await supernode.stop()
        await upstream.stop()
        shutil.rmtree(root, ignore_errors=True)


async def run_zstd(size: int = 16 << 20, nodes: int = 8, limit: int = 4 * MB) -> str:
    data = uncompressed_tar(size)
    lines = [
        f"zstd: {format_size(len(data))} uncompressed tar (Python stdlib) to {nodes} peers, "
        f"upload limit {_mbps(limit)} per peer and seed",
        f"  {'':<14}{'wire bytes':>14}{'x image':>9}{'completion':>12}",
    ]
    for compression in (False, True):
        wire, elapsed = await _zstd_run(data, nodes, limit, compression)
        label = "zstd" if compression else "plain"
        lines.append(
            f"  {label:<14}{format_size(wire):>14}{wire / len(data) / nodes:>8.2f}x{elapsed:>11.2f}s"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------- scheduler


async def _scheduler_run(redis_url: str | None, peers: int, seconds: float) -> tuple[int, float]:
    """Assignments handed out by ``SupernodeService.sync`` in ``seconds`` (each peer
    reports its last batch finished and asks for 4 more)."""
    piece = 4096
    upstream = BlobServer()
    data = os.urandom(4096 * piece)
    url = upstream.add("blob", data)
    await upstream.start()
    config = SupernodeConfig(listen=HostPort("127.0.0.1", 0), piece_size=piece, redis_url=redis_url)
    node = Supernode(config)
    await node.start()
    try:
        service = node.service
        assert service is not None
        ids = [f"peer{i}" for i in range(peers)]
        for i, peer_id in enumerate(ids):
            await service.register_peer(PeerRegistration(peer_id, f"http://127.0.0.1:{10000 + i}", 8))
        info = await service.open_task(OpenTask(ids[0], upstream.url_of(url), Digest.of(data)))
        while service.status(info.task_id)["state"] != "seeded":
            await asyncio.sleep(0.05)
        held: dict[str, list[int]] = {p: [] for p in ids}
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            for i, peer_id in enumerate(ids):
                resp = await service.sync(info.task_id, SyncRequest(peer_id, held[peer_id], want=4))
                held[peer_id] = [a.piece for a in resp.assignments]
                count += len(resp.assignments)
                if i % 50 == 0:
                    await asyncio.sleep(0)  # let the tick write through and renew, as a server would
        return count, time.perf_counter() - started
    finally:
        await node.stop()
        await upstream.stop()


async def run_scheduler(seconds: float, peers: int = 1000) -> str:
    lines = [f"scheduler: assignments per second through the service, {peers} peers, one task"]
    count, elapsed = await _scheduler_run(None, peers, seconds)
    lines.append(f"  {'memory':<14}{count / elapsed:>12,.0f}/s")
    if shutil.which("redis-server") is None:
        lines.append("  redis         skipped: no redis-server on this machine")
        return "\n".join(lines)
    with tempfile.TemporaryDirectory(prefix="swarmpull-bench-redis-") as tmp:
        server = RedisServer(Path(tmp))
        await server.start()
        try:
            count, elapsed = await _scheduler_run(server.url, peers, seconds)
        finally:
            await server.stop()
    lines.append(f"  {'redis':<14}{count / elapsed:>12,.0f}/s")
    return "\n".join(lines)


# ------------------------------------------------------------------------ main

BENCHMARKS = {
    "limits": lambda args: run_limits(args.seconds),
    "zstd": lambda args: run_zstd(),
    "scheduler": lambda args: run_scheduler(args.seconds),
}


async def run_benchmarks(names: list[str], args) -> int:  # type: ignore[no-untyped-def]
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}", flush=True)
    for name in names:
        print(await BENCHMARKS[name](args), flush=True)
        print(flush=True)
    return 0
