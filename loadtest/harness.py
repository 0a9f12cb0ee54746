"""The surge: an upstream registry, a supernode and N real node daemons, all pulling one
image at the same moment, on loopback, spread over worker processes.

This process runs the registry (its egress shaped to ``registry_bandwidth`` and counted
byte by byte) and coordinates; the supernode runs as ``python -m supernode`` with its
seed limited to the registry's rate; workers (``loadtest.worker``) each run hundreds of
nodes. Every node pulls through its own registry proxy, as containerd does, and checks
every blob against its digest. ``direct`` mode is the same pull straight from the
registry, each node's download shaped the same way. Every process and temporary file
is cleaned up, also on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import aiohttp

from loadtest.image import build_image
from loadtest.registry import MiniRegistry
from loadtest.report import ModeResult, kumar_ross_bound
from loadtest.worker import REPOSITORY, TAG, WorkerSpec, raise_fd_limit, worker_main

NODES_PER_WORKER = 300  # a worker's descriptors stay well under this machine's 20k limit


@dataclass(frozen=True, slots=True)
class SurgeConfig:
    nodes: int = 100
    """Nodes that pull the image at the same moment."""
    image_size: int = 4 << 20
    """Total bytes of the image's layers."""
    layers: int = 4
    """Layers the image is cut into (plus a small config blob)."""
    piece_size: int | None = 64 << 10
    """Piece size for the swarm; None: the supernode's rule."""
    node_bandwidth: float | None = 100e3
    """Each node's link, bytes per second, both ways; None: unshaped."""
    registry_bandwidth: float | None = 1e6
    """The registry's egress, bytes per second (the seed is held to it too)."""
    mode: str = "p2p"
    """p2p, direct, or both."""
    transport: str = "http"
    """How p2p nodes fetch: http (the scheduled swarm), bittorrent (libtorrent, the seed
    warm: every blob read whole into the supernode before the surge), or both."""
    workers: int | None = None
    """Worker processes; None: enough for the nodes, at least one per core."""
    seed: int = 1
    timeout: float = 900.0
    """Seconds a run may take; nodes not done by then count as failed."""
    events_dir: Path | None = None
    """Write swarm events there: ``supernode.jsonl`` and one ``worker-N.jsonl`` per worker
    (``swarmpull events summarize DIR/*.jsonl`` makes the report again from them)."""
    supernode_args: tuple[str, ...] = ()
    """More flags for the supernode (e.g. ``--ui-token-file``)."""

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.layers < 1 or self.image_size < self.layers * 1024:
            raise ValueError("need at least one node, one layer and 1 KiB per layer")
        if self.mode not in ("p2p", "direct", "both"):
            raise ValueError("mode is p2p, direct or both")
        if self.transport not in ("http", "bittorrent", "both"):
            raise ValueError("transport is http, bittorrent or both")
        for name in ("node_bandwidth", "registry_bandwidth"):
            value = getattr(self, name)
            if value is not None and value < 1024:
                raise ValueError(f"{name} must be at least 1 KiB/s")

    def worker_count(self) -> int:
        if self.workers is not None:
            return max(1, min(self.workers, self.nodes))
        return max(min(os.cpu_count() or 1, self.nodes), math.ceil(self.nodes / NODES_PER_WORKER))

    def layer_sizes(self) -> list[int]:
        base = self.image_size // self.layers
        return [base] * (self.layers - 1) + [self.image_size - base * (self.layers - 1)]


@dataclass(slots=True)
class Progress:
    mode: str
    done: int = 0
    failed: int = 0
    total: int = 0
    elapsed: float = 0.0
    egress: int = 0
    supernode: str | None = None  # its URL, in p2p mode


@dataclass(slots=True)
class _Run:
    times: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    totals: dict[str, float] = field(default_factory=dict)


async def run_surge(
    config: SurgeConfig,
    progress: Callable[[Progress], None] | None = None,
    before_stop: Callable[[Progress], Awaitable[None]] | None = None,
) -> list[ModeResult]:
    """Run the configured modes one after the other; one result per mode. ``before_stop``
    is awaited once every node of a mode is done, while every daemon still runs."""
    raise_fd_limit()
    image = build_image(config.layer_sizes(), seed=config.seed)
    modes = ["p2p", "direct"] if config.mode == "both" else [config.mode]
    if "p2p" in modes and config.transport != "http":
        swarms = {"http": ["p2p"], "bittorrent": ["bittorrent"], "both": ["p2p", "bittorrent"]}
        index = modes.index("p2p")
        modes[index : index + 1] = swarms[config.transport]
    results = []
    for mode in modes:
        root = Path(tempfile.mkdtemp(prefix=f"swarmpull-surge-{mode}-"))
        try:
            results.append(await _run_mode(config, mode, image, root, progress, before_stop))
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return results


async def _run_mode(config: SurgeConfig, mode: str, image, root: Path, progress, before_stop) -> ModeResult:  # type: ignore[no-untyped-def]
    registry = MiniRegistry(rate=config.registry_bandwidth)
    registry.add(REPOSITORY, TAG, image)
    supernode: asyncio.subprocess.Process | None = None
    workers: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
    try:
        await registry.start()
        supernode_url = None
        if mode != "direct":
            supernode, supernode_url = await _start_supernode(config, root, registry.host)
        if mode == "bittorrent" or (mode == "p2p" and config.transport == "both"):
            assert supernode_url is not None  # the same warm seed for both swarms
            await _warm_seed(supernode_url, f"{registry.host}/{REPOSITORY}:{TAG}")
        workers = _start_workers(config, mode, root, registry.host, supernode_url)
        for _, conn in workers:  # every node up before anyone pulls
            message = await asyncio.to_thread(conn.recv)
            if message[0] != "ready":
                raise RuntimeError(f"a worker failed to start: {message}")
        # The start, on the wall clock (workers in other processes share it) and on the
        # registry's clock (its egress samples), taken at the same moment.
        start_at, started = time.time() + 1.0, registry.clock.monotonic() + 1.0
        for _, conn in workers:
            conn.send(("go", start_at))
        state = Progress(mode, total=config.nodes, supernode=supernode_url)
        run = await _collect(config, workers, registry, start_at, state, progress)
        if before_stop is not None:
            await before_stop(state)
        egress = registry.blob_bytes_sent
        supernode_stats = await _supernode_stats(supernode, supernode_url) if supernode else {}
        size = image.size + image.config.size
        timeline = registry.egress_since(started)
        wall = time.time() - start_at
        return _result(config, mode, size, egress, run, wall, supernode_stats, registry, timeline)
    finally:
        await _stop(workers, supernode)
        await registry.stop()


async def _start_supernode(
    config: SurgeConfig, root: Path, registry: str
) -> tuple[asyncio.subprocess.Process, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = ["--listen", f"127.0.0.1:{port}", "--data-dir", str(root / "supernode"), *config.supernode_args]
    args += ["--insecure-registry", registry]
    if config.events_dir is not None:
        args += ["--events", str(config.events_dir / "supernode.jsonl")]
    if config.piece_size:
        args += ["--piece-size", str(config.piece_size)]
    if config.registry_bandwidth:
        args += ["--seed-upload-limit", f"{int(config.registry_bandwidth)}B/s"]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "swarmpull", "supernode", *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=open(root / "supernode.log", "wb"),  # noqa: SIM115
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{url}/healthz") as resp:
                    if resp.status == 200:
                        return process, url
            if process.returncode is not None:
                break
            await asyncio.sleep(0.05)
    log = (root / "supernode.log").read_text(errors="replace").strip().splitlines()
    if process.returncode is None:
        process.kill()
        await process.wait()
    raise RuntimeError(f"the supernode did not start: {log[-1] if log else 'no output'}")


async def _warm_seed(supernode: str, image: str, timeout: float = 600.0) -> None:
    """Every blob of the image read whole into the seed before the surge (a preheat whose
    selection matches no node only warms the seed)."""
    body = {"image": image, "select": {"nodes": ["warm-the-seed-only"]}, "deadline": timeout}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{supernode}/api/v1/preheat", json=body) as resp:
            job = await resp.json()
            if resp.status != 201:
                raise RuntimeError(f"warming the seed failed: {job}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            async with session.get(f"{supernode}/api/v1/preheat/{job['id']}") as resp:
                status = await resp.json()
            layers = status.get("layers") or []
            errors = [status.get("error")] + [layer.get("error") for layer in layers]
            if any(errors):
                raise RuntimeError(f"warming the seed failed: {next(e for e in errors if e)}")
            if layers and all(layer.get("seeded") for layer in layers):
                return
            await asyncio.sleep(0.2)
    raise RuntimeError("warming the seed took too long")


def _start_workers(
    config: SurgeConfig, mode: str, root: Path, registry: str, supernode: str | None
) -> list[tuple[multiprocessing.process.BaseProcess, Connection]]:
    context = multiprocessing.get_context("spawn")
    count = config.worker_count()
    per, extra = divmod(config.nodes, count)
    workers = []
    first = 0
    for w in range(count):
        n = per + (w < extra)
        events = str(config.events_dir / f"worker-{w}.jsonl") if config.events_dir and supernode else None
        spec = WorkerSpec(
            first, n, str(root), mode, registry, supernode, config.node_bandwidth, events=events
        )
        parent, child = context.Pipe()
        process = context.Process(
            target=worker_main, args=(spec, child), name=f"surge-worker-{w}", daemon=True
        )
        process.start()
        child.close()
        workers.append((process, parent))
        first += n
    return workers


async def _collect(config, workers, registry, start_at, state, progress) -> _Run:  # type: ignore[no-untyped-def]
    run = _Run()
    pending = {id(conn): conn for _, conn in workers}

    async def listen(conn: Connection) -> None:
        while True:
            message = await asyncio.to_thread(conn.recv)
            if message[0] == "done":
                _, _, seconds, error = message
                if error:
                    run.errors.append(error)
                    state.failed += 1
                else:
                    run.times.append(seconds)
                    state.done += 1
            elif message[0] == "totals":
                for key, value in message[1].items():
                    run.totals[key] = run.totals.get(key, 0.0) + value
                pending.pop(id(conn), None)
                return

    listeners = [asyncio.create_task(listen(conn)) for _, conn in workers]
    try:
        deadline = start_at + config.timeout
        while pending and time.time() < deadline:
            if any(t.done() and t.exception() for t in listeners):
                raise RuntimeError(f"a worker failed: {[t.exception() for t in listeners if t.done()]}")
            state.elapsed, state.egress = max(0.0, time.time() - start_at), registry.blob_bytes_sent
            if progress is not None:
                progress(state)
            await asyncio.sleep(0.25)
        if progress is not None:
            state.elapsed, state.egress = time.time() - start_at, registry.blob_bytes_sent
            progress(state)
    finally:
        for task in listeners:
            task.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)
    return run


async def _supernode_stats(process: asyncio.subprocess.Process, url: str | None) -> dict[str, float]:
    stats: dict[str, float] = {}
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        stats["supernode CPU s"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    if url:
        with contextlib.suppress(aiohttp.ClientError):
            async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as resp:
                text = await resp.text()
            calls = [
                line for line in text.splitlines() if line.startswith("swarmpull_supernode_calls_total{")
            ]
            stats["supernode calls"] = sum(int(float(line.split()[-1])) for line in calls)
            seed = [  # what the seed sent: pieces over HTTP, and over BitTorrent
                float(line.split()[-1])
                for line in text.splitlines()
                if line.startswith(
                    (
                        "swarmpull_supernode_seed_upload_bytes_total ",
                        "swarmpull_supernode_torrent_upload_bytes ",
                    )
                )
            ]
            stats["seed egress bytes"] = sum(seed)
    return stats


async def _stop(workers, supernode) -> None:  # type: ignore[no-untyped-def]
    for _, conn in workers:
        with contextlib.suppress(OSError, ValueError):
            conn.send(("stop",))
    for process, conn in workers:
        with contextlib.suppress(OSError, EOFError):
            while await asyncio.wait_for(asyncio.to_thread(conn.recv), 30) != ("stopped",):
                pass
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join()
    if supernode is not None and supernode.returncode is None:
        supernode.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(supernode.wait(), 10)
        except TimeoutError:
            supernode.kill()
            await supernode.wait()


def _result(config, mode, size, egress, run, wall, supernode_stats, registry, timeline) -> ModeResult:  # type: ignore[no-untyped-def]
    up = config.node_bandwidth or math.inf
    origin = config.registry_bandwidth or math.inf
    bound = kumar_ross_bound(size, config.nodes, origin, 0.0 if mode == "direct" else up, up)
    extra: dict[str, object] = {"registry manifest bytes": registry.bytes_sent - registry.blob_bytes_sent}
    seed = supernode_stats.pop("seed egress bytes", None)
    extra.update(supernode_stats)
    if seed is not None:
        extra["seed egress"] = f"{seed / size:.2f}x image"
    if run.errors:
        extra["first error"] = run.errors[0][:60]
    return ModeResult(
        mode=mode,
        nodes=config.nodes,
        completed=len(run.times),
        failed=config.nodes - len(run.times),
        image_size=size,
        registry_egress=egress,
        completion_times=sorted(run.times),
        bound=bound,
        wall_time=wall,
        extra=extra,
        egress_timeline=timeline,
        sources={k.removeprefix("bytes from "): v for k, v in run.totals.items()},
        registry_requests=dict(registry.requests),
    )
