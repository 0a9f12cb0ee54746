"""The surge: an upstream registry, a supernode and N real node daemons, all pulling one
image at the same moment, on loopback, spread over worker processes.

This process runs the registry (its egress shaped to ``registry_bandwidth`` and counted
byte by byte) and coordinates; the supernode runs as ``python -m supernode`` with its
seed limited to the registry's rate; workers (``loadtest.worker``) each run hundreds of
nodes. Every node pulls through its own registry proxy, as containerd does, and checks
every blob against its digest. ``direct`` mode is the same pull straight from the
registry, each node's download shaped the same way. Every process and temporary file
is cleaned up, also on Ctrl-C.

With ``faults`` (``loadtest.faults``) the surge runs twice: without faults, then with
them (nodes killed, byzantine nodes, a flaky registry, the supernode owner killed, Redis
restarted), and each result carries its fault figures (``loadtest.fault_report``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import os
import random
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.controlplane import ControlPlane
from loadtest.fault_report import judge, summarize
from loadtest.faults import FaultConfig, FaultInjector, FaultPlan, NodeFaults, stop_task
from loadtest.flaky import FlakyRegistry
from loadtest.image import build_image
from loadtest.registry import MiniRegistry
from loadtest.report import ModeResult, kumar_ross_bound
from loadtest.worker import REPOSITORY, TAG, WorkerSpec, raise_fd_limit, worker_main
from swarmpull.core.identity import Role
from swarmpull.edges.tls import ClusterTls, throwaway_cluster

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
    faults: FaultConfig | None = None
    """Faults to inject (p2p only); the same surge runs first without them."""
    events_dir: Path | None = None
    """Write swarm events there (in a fault run, the surge with the faults only):
    ``supernode.jsonl`` (``supernode-N.jsonl`` for further replicas) and one ``worker-N.jsonl`` per worker
    (``swarmpull events summarize DIR/*.jsonl`` makes the report again from them)."""
    supernode_args: tuple[str, ...] = ()
    """More flags for the supernode (e.g. ``--ui-token-file``)."""
    tls: bool = True
    """Mutual TLS between the supernode and the nodes, as in production (a throwaway CA
    in the run's temporary directory), so the figures include its cost; False: plain HTTP
    (``--insecure-cluster``), to compare. A fault run is plain HTTP either way: its
    byzantine fronts speak the piece protocol in the clear."""

    def __post_init__(self) -> None:
        if self.faults is not None and (self.mode != "p2p" or self.transport != "http"):
            # The byzantine fronts and the runtimes' audit speak only the HTTP piece protocol.
            raise ValueError("faults apply to the p2p mode over the HTTP swarm only")
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
    outcomes: dict[int, tuple[float, str | None, dict[str, int]]] = field(default_factory=dict)
    lies: dict[str, int] = field(default_factory=dict)
    liars: set[str] = field(default_factory=set)


async def run_surge(
    config: SurgeConfig,
    progress: Callable[[Progress], None] | None = None,
    before_stop: Callable[[Progress], Awaitable[None]] | None = None,
    twin: bool = True,
) -> list[ModeResult]:
    """Run the configured modes one after the other; one result per mode. ``before_stop``
    is awaited once every node of a mode is done, while every daemon still runs. A fault
    run is preceded by its fault-free twin unless ``twin`` is false (tests that judge no time)."""
    raise_fd_limit()
    image = build_image(config.layer_sizes(), seed=config.seed)
    modes = ["p2p", "direct"] if config.mode == "both" else [config.mode]
    if "p2p" in modes and config.transport != "http":
        swarms = {"http": ["p2p"], "bittorrent": ["bittorrent"], "both": ["p2p", "bittorrent"]}
        index = modes.index("p2p")
        modes[index : index + 1] = swarms[config.transport]
    runs: list[tuple[str, FaultConfig | None]] = [(mode, None) for mode in modes]
    if config.faults is not None:  # the same surge without faults first: what they cost
        runs = [("p2p", config.faults)]
        if twin:
            runs.insert(0, ("p2p", config.faults.fault_free()))
    results = []
    for mode, faults in runs:
        root = Path(tempfile.mkdtemp(prefix=f"swarmpull-surge-{mode}-"))
        try:
            results.append(await _run_mode(config, mode, image, root, progress, before_stop, faults))
        finally:
            shutil.rmtree(root, ignore_errors=True)
    if config.faults is not None:
        run = results[-1]
        run.mode = "faults"
        base = results[0] if twin else None
        if base is not None:
            base.mode = "no faults"
        run.faults.goals = judge(config.faults, base.faults if base else None, run.faults)
    return results


async def _run_mode(  # type: ignore[no-untyped-def]
    config: SurgeConfig, mode: str, image, root: Path, progress, before_stop, faults: FaultConfig | None
) -> ModeResult:
    size = image.size + image.config.size
    plan = FaultPlan.draw(faults, config.nodes, _bound(config, mode, size), config.seed) if faults else None
    # Events of the surge with the faults only: the fault-free twin's would mix with them.
    events = config.events_dir if faults is config.faults and mode != "direct" else None
    registry: MiniRegistry = MiniRegistry(rate=config.registry_bandwidth)
    if faults is not None and faults.flaky_upstream:
        rng = random.Random(config.seed)
        registry = FlakyRegistry(faults.flaky_upstream, rng, rate=config.registry_bandwidth)
    registry.add(REPOSITORY, TAG, image)
    control: ControlPlane | None = None
    workers: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
    injection: asyncio.Task[None] | None = None
    try:
        await registry.start()
        urls: list[str] = []
        tls_root = None
        if mode != "direct":
            replicas = faults.supernode_replicas if faults else 0
            if config.tls and faults is None:
                tls_root = _throwaway_ca(root / "tls", max(1, replicas), config.nodes)
            args = _supernode_args(config, registry.host)
            control = ControlPlane(root, args, replicas, events=events, tls_root=tls_root)
            await control.start()
            urls = control.urls
        if mode == "bittorrent" or (mode == "p2p" and config.transport == "both"):
            # The same warm seed for both swarms.
            await _warm_seed(urls[0], f"{registry.host}/{REPOSITORY}:{TAG}", tls_root)
        specs = _worker_specs(config, mode, root, registry.host, urls, faults, plan, events, tls_root)
        workers = [_spawn(spec) for spec in specs]
        for _, conn in workers:  # every node up before anyone pulls
            message = await asyncio.to_thread(conn.recv)
            if message[0] != "ready":
                raise RuntimeError(f"a worker failed to start: {message}")
        # The start, on the wall clock (workers in other processes share it) and on the
        # registry's clock (its egress samples), taken at the same moment.
        start_at, started = time.time() + 1.0, registry.clock.monotonic() + 1.0
        for _, conn in workers:
            conn.send(("go", start_at))
        run = _Run()
        injector = None
        if plan is not None:
            alone = {spec.first: worker for spec, worker in zip(specs, workers, strict=True) if spec.alone}
            alone_specs = {spec.first: spec for spec in specs if spec.alone}
            injector = FaultInjector(
                plan, workers, alone, lambda node, at: _respawn(alone_specs[node], at),
                lambda node: node in run.outcomes, control, [_task_id(d) for d in image.blobs()],
            )  # fmt: skip
            injection = asyncio.create_task(injector.run(start_at))
        state = Progress(mode, total=config.nodes, supernode=urls[0] if urls else None)
        await _collect(config, workers, registry, start_at, state, progress, run, injection, injector)
        if before_stop is not None:
            await before_stop(state)
        egress = registry.blob_bytes_sent
        supernode_stats = await control.stats() if control else {}
        timeline = registry.egress_since(started)
        wall = time.time() - start_at
        result = _result(config, mode, size, egress, run, wall, supernode_stats, registry, timeline)
        if faults is not None and plan is not None and control is not None:
            result.faults = summarize(
                faults, result, run.outcomes,
                byzantine=plan.byzantine, gone=injector.gone if injector else set(),
                decisions=control.decisions(), reported=await control.failures(),
                lies=run.lies, liars=run.liars,
                registry_faults=dict(getattr(registry, "injected", {})),
                timeline=injector.timeline if injector else [],
            )  # fmt: skip
        return result
    finally:
        await stop_task(injection)
        await _stop(workers, control)
        await registry.stop()


def _bound(config: SurgeConfig, mode: str, size: int) -> float:
    up = config.node_bandwidth or math.inf
    origin = config.registry_bandwidth or math.inf
    return kumar_ross_bound(size, config.nodes, origin, 0.0 if mode == "direct" else up, up)


def _task_id(digest: str) -> str:
    return "sha256-" + digest.removeprefix("sha256:")


OPERATOR = "surge-operator"  # the supernode certificate that starts preheats (warms the seed)


def _throwaway_ca(root: Path, replicas: int, nodes: int) -> Path:
    """A CA and the TLS directories of a surge under ``root``: ``sn<i>`` for each supernode
    replica, ``node<i>`` for each node (its peer id), and the operator's."""
    members = [(f"sn{i}", Role.SUPERNODE) for i in range(replicas)] + [(OPERATOR, Role.SUPERNODE)]
    members += [(f"node{i}", Role.NODE) for i in range(nodes)]
    throwaway_cluster(root, members, now=datetime.now(UTC), days=2)
    return root


def _supernode_args(config: SurgeConfig, registry: str) -> list[str]:
    # The registry is on loopback: the supernode reads no non-public host unless allowed.
    args = [*config.supernode_args, "--insecure-registry", registry, "--upstream-allow", registry]
    if config.piece_size:
        args += ["--piece-size", str(config.piece_size)]
    if config.registry_bandwidth:
        args += ["--seed-upload-limit", f"{int(config.registry_bandwidth)}B/s"]
    return args


async def _warm_seed(supernode: str, image: str, tls_root: Path | None, timeout: float = 600.0) -> None:
    """Every blob of the image read whole into the seed before the surge (a preheat whose
    selection matches no node only warms the seed)."""
    body = {"image": image, "select": {"nodes": ["warm-the-seed-only"]}, "deadline": timeout}
    tls: dict[str, Any] = {}
    if tls_root is not None:  # starting a preheat takes a supernode certificate
        tls = ClusterTls.load(tls_root / OPERATOR, now=datetime.now(UTC), role=Role.SUPERNODE).to_supernode()
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{supernode}/api/v1/preheat", json=body, **tls) as resp:
            job = await resp.json()
            if resp.status != 201:
                raise RuntimeError(f"warming the seed failed: {job}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            async with session.get(f"{supernode}/api/v1/preheat/{job['id']}", **tls) as resp:
                status = await resp.json()
            layers = status.get("layers") or []
            errors = [status.get("error")] + [layer.get("error") for layer in layers]
            if any(errors):
                raise RuntimeError(f"warming the seed failed: {next(e for e in errors if e)}")
            if layers and all(layer.get("seeded") for layer in layers):
                return
            await asyncio.sleep(0.2)
    raise RuntimeError("warming the seed took too long")


def _worker_specs(  # type: ignore[no-untyped-def]
    config: SurgeConfig, mode: str, root: Path, registry: str, urls: list[str], faults, plan, events, tls_root
) -> list[WorkerSpec]:
    """Nodes spread over workers; in a fault run each node to be killed has one alone.
    With ``events`` (a directory) each worker writes its nodes' events to a file there;
    with ``tls_root`` each node speaks mutual TLS with its certificate from there."""
    tls = str(tls_root) if tls_root is not None else None
    alone = plan.alone if plan is not None else []
    shared = config.nodes - len(alone)
    count = min(config.worker_count(), max(1, shared))
    per, extra = divmod(shared, count)
    node_faults = None
    if faults is not None and plan is not None:
        sizes = tuple(config.layer_sizes())
        node_faults = NodeFaults(plan.byzantine, faults.byzantine_mode, sizes, config.seed, config.timeout)
    supernode, replicas = (urls[0], tuple(urls[1:])) if urls else (None, ())
    specs, first = [], 0
    for w in range(count):
        n = per + (w < extra)
        if n:
            specs.append(
                WorkerSpec(first, n, str(root), mode, registry, supernode, config.node_bandwidth,
                           events=_events_file(events, len(specs)), replicas=replicas, faults=node_faults,
                           tls_root=tls)
            )  # fmt: skip
        first += n
    for node in alone:
        specs.append(
            WorkerSpec(node, 1, str(root), mode, registry, supernode, config.node_bandwidth,
                       events=_events_file(events, len(specs)), replicas=replicas, faults=node_faults,
                       alone=True, tls_root=tls)
        )  # fmt: skip
    return specs


def _events_file(events: Path | None, worker: int) -> str | None:
    return str(events / f"worker-{worker}.jsonl") if events is not None else None


def _spawn(spec: WorkerSpec) -> tuple[multiprocessing.process.BaseProcess, Connection]:
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(
        target=worker_main, args=(spec, child), name=f"surge-worker-{spec.first}", daemon=True
    )
    process.start()
    child.close()
    return process, parent


def _respawn(spec: WorkerSpec, start_at: float) -> tuple[multiprocessing.process.BaseProcess, Connection]:
    """A killed node's worker again, on the same data dir; it pulls at once, its time
    counted from the surge's start (blocking: run it in a thread)."""
    process, conn = _spawn(spec)
    message = conn.recv()
    if message[0] != "ready":
        raise RuntimeError(f"a restarted worker failed to start: {message}")
    conn.send(("go", start_at))
    return process, conn


async def _collect(config, workers, registry, start_at, state, progress, run, injection, injector) -> None:  # type: ignore[no-untyped-def]
    pending: dict[int, Connection] = {}
    listeners: dict[int, asyncio.Task[None]] = {}
    dead = injector.dead if injector is not None else set()

    async def listen(conn: Connection) -> None:
        while True:
            try:
                message = await asyncio.to_thread(conn.recv)
            except (EOFError, OSError):
                if id(conn) in dead:  # killed on purpose
                    pending.pop(id(conn), None)
                    return
                raise
            if message[0] == "done":
                _, index, seconds, error, *more = message
                run.outcomes[index] = (seconds, error, more[0] if more else {})
                if error:
                    run.errors.append(error)
                    state.failed += 1
                else:
                    run.times.append(seconds)
                    state.done += 1
            elif message[0] == "lies":
                for key, value in message[1].items():
                    run.lies[key] = run.lies.get(key, 0) + value
                run.liars.update(message[2])
            elif message[0] == "totals":
                for key, value in message[1].items():
                    run.totals[key] = run.totals.get(key, 0.0) + value
                pending.pop(id(conn), None)
                return

    def follow() -> None:  # workers started since (restarted nodes) are heard too
        for _, conn in workers:
            if id(conn) not in listeners:
                pending[id(conn)] = conn
                listeners[id(conn)] = asyncio.create_task(listen(conn))

    try:
        deadline = start_at + config.timeout
        while time.time() < deadline:
            follow()  # before the test below: a node restarted last is still to be heard
            if injection is not None and injection.done() and injection.exception():
                raise RuntimeError(f"fault injection failed: {injection.exception()!r}")
            if any(t.done() and t.exception() for t in listeners.values()):
                failed = [t.exception() for t in listeners.values() if t.done()]
                raise RuntimeError(f"a worker failed: {failed}")
            if not pending and (injection is None or injection.done()):
                break
            state.elapsed, state.egress = max(0.0, time.time() - start_at), registry.blob_bytes_sent
            if progress is not None:
                progress(state)
            await asyncio.sleep(0.25)
        if progress is not None:
            state.elapsed, state.egress = time.time() - start_at, registry.blob_bytes_sent
            progress(state)
    finally:
        for task in listeners.values():
            task.cancel()
        await asyncio.gather(*listeners.values(), return_exceptions=True)


async def _stop(workers, control) -> None:  # type: ignore[no-untyped-def]
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
    if control is not None:
        await control.stop()


def _result(config, mode, size, egress, run, wall, supernode_stats, registry, timeline) -> ModeResult:  # type: ignore[no-untyped-def]
    bound = _bound(config, mode, size)
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
