"""``swarmpull benchmarks limits``: achieved upload and download rates against the set
limits, over real loopback transfers through the production piece server and client, with
1 to 32 concurrent transfers; the rate is read every 50 ms and reported over every
2-second window (the limits promise to hold within 10 % over any such window)."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from swarmpull.core.digest import Digest
from swarmpull.core.rates import Priority
from swarmpull.edges.http import HostPort, start_site
from swarmpull.edges.ratelimit import RateLimiter
from swarmpull.edges.store import BlobMeta, PieceStore
from swarmpull.edges.transport import PieceClient, PieceServer, TransferCounters

MB = 1000**2
LOOPBACK = HostPort("127.0.0.1", 0)


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
    client: PieceClient,
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
            await client.fetch(address, task_id, piece, blob.writer(piece))
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
        client = PieceClient(session, "bench", limiter=client_limiter)
        probe = RateProbe(lambda: measured.passed)
        probe.start()
        pulls = [asyncio.create_task(_pull_loop(client, sources, stop, 32, i)) for i in range(transfers)]
        await asyncio.sleep(seconds)
        stop.set()
        await probe.stop()
        for pull in pulls:
            pull.cancel()
        await asyncio.gather(*pulls, return_exceptions=True)
        client.close()
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
