"""``swarmpull benchmarks supernode``: the supernode's CPU through a whole surge, over HTTP.

A real supernode runs in a process of its own (``python -m swarmpull supernode``) and
reads ``tasks`` blobs (an image's layers) of ``pieces`` pieces each from an upstream
once. Synthetic peers in one or two worker processes then do what real peers do, with
the same client code and the same batching (``peer.control`` on ``peer.link``):
register, open their tasks together, report whenever the supernode's answers say to
(``report_in``) with their pieces growing over ``duration`` seconds and what they saw
of their parents, ask for parents now and then, report once complete. They move no
piece bytes: only the control plane is measured. The supernode's CPU time is read from
``/proc`` at each phase boundary, and divided by the calls of the phase it gives the
cost of one call of each kind, which is what the simulator charges (``swarmpull
loadtest --simulate --service ...``).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import aiohttp
import uvloop

from loadtest.origin_server import BlobServer
from loadtest.services import cpu_seconds, free_port, until_ready
from peer.control import Control, Reporter
from peer.link import LinkError, SupernodeLink
from swarmpull.core.bitfield import full, to_text
from swarmpull.core.clock import SystemClock
from swarmpull.core.digest import Digest
from swarmpull.core.protocol import (
    OpenTask,
    ParentStats,
    PeerRegistration,
    ReportAnswer,
    TaskInfo,
    TaskReport,
)
from swarmpull.edges.store import PieceStore

PIECE = 4096  # the bytes of a piece do not matter here: only their number does


@dataclass(frozen=True, slots=True)
class Spec:
    first: int
    count: int
    supernode: str
    url: str
    digest: str
    pieces: int
    duration: float
    root: str
    urls: tuple[tuple[str, str], ...] = ()  # the other layers' (url, digest)


def worker_main(spec: Spec, conn: Connection) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(_worker(spec, conn))


async def _worker(spec: Spec, conn: Connection) -> None:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        peers = [_Peer(spec, spec.first + i, session) for i in range(spec.count)]
        for chunk in range(0, len(peers), 200):  # registration: a node coming up
            await asyncio.gather(*(p.register() for p in peers[chunk : chunk + 200]))
        conn.send(("registered",))
        await asyncio.to_thread(conn.recv)
        await asyncio.gather(*(p.open() for p in peers))
        conn.send(("opened",))
        await asyncio.to_thread(conn.recv)
        started = time.monotonic()
        await asyncio.gather(*(p.surge(started) for p in peers))
        calls: dict[str, int] = {}
        for peer in peers:
            for kind, n in peer.calls.items():
                calls[kind] = calls.get(kind, 0) + n
        conn.send(("done", calls, sum(p.errors for p in peers)))
        await asyncio.to_thread(conn.recv)
        for peer in peers:
            await peer.leave()


class _Peer:
    """One synthetic peer: the real control channel, pieces that appear over time."""

    def __init__(self, spec: Spec, index: int, session: aiohttp.ClientSession) -> None:
        self.spec = spec
        self.id = f"bench{index}"
        link = SupernodeLink(session, (spec.supernode,), self.id, timeout=60.0)
        store = PieceStore(Path(spec.root) / self.id)  # empty: nothing to announce
        registration = PeerRegistration(self.id, f"http://127.0.0.1:{1 + index % 60000}", 8)
        self.control = Control(link, store, registration, SystemClock())
        self.infos: list[TaskInfo] = []
        self.parents: dict[str, list[str]] = {}  # task -> its parents now
        self.rng = random.Random(index)
        self.started = 0.0
        self.done: set[str] = set()
        self.all_done = asyncio.Event()
        self.calls: dict[str, int] = {}
        self.errors = 0

    async def register(self) -> None:
        await self.control.ensure_registered()

    async def open(self) -> None:
        """Every layer at once: the control channel sends them in one call."""
        layers = ((self.spec.url, self.spec.digest), *self.spec.urls)
        requests = [OpenTask(self.id, url, Digest.parse(digest)) for url, digest in layers]
        self.infos = list(await asyncio.gather(*(self.control.open(r, 120.0) for r in requests)))
        for info in self.infos:
            self.parents[info.task_id] = [p.id for p in info.parents]

    def _have(self) -> int:
        """The pieces held by now: a straight line from none to all over ``duration``."""
        share = min(1.0, (time.monotonic() - self.started) / self.spec.duration)
        return full(int(share * self.spec.pieces))

    def _reporter(self, task_id: str) -> Reporter:
        def build() -> TaskReport:
            parents = self.parents.get(task_id, [])
            stats = [ParentStats(p, 1 << 20, 0.05) for p in parents if not p.startswith("seed")]
            drop = [parents[0]] if parents and self.rng.random() < 0.1 else []  # an idle one
            return TaskReport(task_id, to_text(self._have(), self.spec.pieces), stats, drop)

        def answer(result: ReportAnswer | LinkError) -> None:
            if isinstance(result, LinkError):
                self.errors += 1
                return
            self.parents[task_id] = [p.id for p in result.parents]
            if self._have() == full(self.spec.pieces):
                self.done.add(task_id)
                if len(self.done) == len(self.infos):
                    self.all_done.set()

        return Reporter(build, answer)

    async def surge(self, started: float) -> None:
        if not self.infos:
            return
        self.started = started
        for info in self.infos:
            self.control.watch(info.task_id, self._reporter(info.task_id), info.report_in)
        runner = asyncio.create_task(self.control.run())
        try:
            await asyncio.sleep(self.spec.duration)
            for info in self.infos:
                self.control.report_soon(info.task_id)  # complete: the last report
            await asyncio.wait_for(self.all_done.wait(), 60)
            for info in self.infos:
                self.control.unwatch(info.task_id)
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        self.calls = {"register": 1, "open": 1, "report": self.control.calls - 2}

    async def leave(self) -> None:
        await self.control.leave()


async def run_supernode(
    peers: int, pieces: int, duration: float, tasks: int = 1, workers: int | None = None
) -> str:
    root = Path(tempfile.mkdtemp(prefix="swarmpull-bench-supernode-"))
    upstream = BlobServer()
    blobs = [os.urandom(pieces * PIECE) for _ in range(tasks)]
    urls = [upstream.add(f"blob{i}", data) for i, data in enumerate(blobs)]
    port = free_port()
    supernode_url = f"http://127.0.0.1:{port}"
    args = ["--listen", f"127.0.0.1:{port}", "--data-dir", str(root / "sn"), "--piece-size", str(PIECE)]
    args.append("--insecure-cluster")
    args += ["--upstream-allow", "127.0.0.1"]  # the upstream is on loopback
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "swarmpull", "--log-level", "warning", "supernode", *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=open(root / "supernode.log", "wb"),  # noqa: SIM115
    )  # fmt: skip
    count = workers or (1 if peers <= 2000 else 2)
    context = multiprocessing.get_context("spawn")
    pipes: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
    try:
        await upstream.start()
        async with aiohttp.ClientSession() as session:

            async def healthy() -> bool:
                async with session.get(f"{supernode_url}/healthz") as resp:
                    return resp.status == 200

            await until_ready(healthy, 60.0, "the supernode did not come up", process)
        per, extra = divmod(peers, count)
        first = 0
        for w in range(count):
            n = per + (w < extra)
            layers = [(upstream.url_of(u), str(Digest.of(b))) for u, b in zip(urls, blobs, strict=True)]
            spec = Spec(
                first, n, supernode_url, *layers[0], pieces, duration, str(root / f"w{w}"), tuple(layers[1:])
            )  # fmt: skip
            parent, child = context.Pipe()
            worker = context.Process(target=worker_main, args=(spec, child), daemon=True)
            worker.start()
            child.close()
            pipes.append((worker, parent))
            first += n

        async def phase(expect: str) -> list[tuple]:  # type: ignore[type-arg]
            answers = [await asyncio.to_thread(conn.recv) for _, conn in pipes]
            if any(a[0] != expect for a in answers):
                raise RuntimeError(f"a benchmark worker failed: {answers}")
            return answers

        cpu0 = cpu_seconds(process.pid)
        await phase("registered")
        cpu1 = cpu_seconds(process.pid)
        for _, conn in pipes:
            conn.send(("go",))
        await phase("opened")
        cpu2 = cpu_seconds(process.pid)
        for _, conn in pipes:
            conn.send(("go",))
        done = await phase("done")
        cpu3 = cpu_seconds(process.pid)
        for _, conn in pipes:
            conn.send(("stop",))
        calls: dict[str, int] = {}
        for answer in done:
            for kind, n in answer[1].items():
                calls[kind] = calls.get(kind, 0) + n
        errors = sum(a[2] for a in done)
    finally:
        for worker, _ in pipes:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
        if process.returncode is None:
            process.terminate()
            await process.wait()
        await upstream.stop()
        shutil.rmtree(root, ignore_errors=True)
    register, opening, surge = cpu1 - cpu0, cpu2 - cpu1, cpu3 - cpu2
    reports = calls.get("report", 0)
    per_report = surge / max(1, reports)
    layers = f"{tasks} tasks (layers) of {pieces} pieces" if tasks > 1 else f"one task of {pieces} pieces"
    lines = [
        f"supernode: {peers} synthetic peers, {layers}, a surge of {duration:.1f} s, "
        f"{count} worker process(es)",
        f"  registration      {register:7.2f} CPU s   {register / peers * 1000:6.3f} ms per peer",
        f"  opens (1 call)    {opening:7.2f} CPU s   {opening / peers * 1000:6.3f} ms per call "
        f"of {tasks} task(s)",
        f"  the surge         {surge:7.2f} CPU s   {reports} report calls, {per_report * 1000:.3f} ms each",
        f"  per surge         {opening + surge:7.2f} CPU s   "
        f"{(opening + surge) / peers * 1000:6.3f} ms per peer"
        f"   ({(opening + surge) / duration:.1%} of the surge's {duration:.1f} s)",
        f"  errors            {errors}",
    ]
    if tasks == 1:
        lines.append(
            f"  simulator charge  --service open={opening / peers * 1000:.3f}ms,"
            f"report={per_report * 1000:.3f}ms  (and task=: each task beyond a call's first, "
            "from a run with --tasks 8)"
        )
    return "\n".join(lines)
