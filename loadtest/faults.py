"""Faults for a real-socket surge (``swarmpull loadtest --kill-fraction F ...``): what to
break, when, and the timeline that breaks it.

- ``FaultConfig``: the options. A fault run also runs the same surge without faults first
  (same supernode layout, same runtime), so each figure has its fault-free twin.
- ``FaultPlan``: drawn from the seed before a run: which nodes lie (``byzantine``), which
  are killed and when, which of those come back, when the supernode that owns the image's
  layers is killed, when Redis restarts. Times are shares of the surge's bound T_min.
- ``NodeFaults``: what a worker needs of the plan (its liars, the runtime's audit).
- ``FaultInjector``: the timeline, run beside the surge.

How a node is killed. Nodes share worker processes (hundreds on one event loop); a node
"killed" in process would be torn down by Python, by hand, with every chance of closing
something politely that a crash leaves open. So each node to be killed runs alone in its
own worker process, and dies by SIGKILL: the kernel resets its connections, its store is
left as a crash leaves it (a piece half written, the data dir's lock released only by
the death), and its runtime's pull dies with it. A restarted node is a new worker process
on the same data dir and peer id; its runtime pulls again, and its time counts from the
start of the surge.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from loadtest.byzantine import MODES
from loadtest.controlplane import ControlPlane

RESTART_DELAY = 2.0  # seconds between killing a node and starting it again
KILL_WINDOW = (0.15, 0.5)  # nodes die between these shares of T_min after the start
SUPERNODE_KILL_AT = 0.3  # the supernode owner dies at this share of T_min
REDIS_RESTART_AT = 0.4

Worker = tuple[BaseProcess, Connection]


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """What a fault run breaks. Shares are of the surge's nodes."""

    kill_fraction: float = 0.0
    """Nodes killed (SIGKILL) while they pull."""
    restart_share: float = 0.5
    """Of the killed nodes, those started again on the same data dir."""
    byzantine_fraction: float = 0.0
    """Nodes whose piece server lies (``byzantine_mode``); they pull honestly."""
    byzantine_mode: str = "wrong"
    """wrong, truncate, slow or liar (``loadtest.byzantine``)."""
    flaky_upstream: float = 0.0
    """Probability that the registry answers a request 503 or resets its connection."""
    kill_supernode: bool = False
    """Kill (SIGKILL) the supernode replica that owns the image's layers mid-surge."""
    restart_redis: bool = False
    """Kill redis-server mid-surge and start it again on its data."""
    replicas: int | None = None
    """Supernode replicas on Redis; 0: one supernode with its state in memory. Default:
    2 when the supernode or Redis is to fail, else 0."""

    def __post_init__(self) -> None:
        for name in ("kill_fraction", "byzantine_fraction", "flaky_upstream"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"--{name.replace('_', '-')} is a share from 0 to below 1")
        if not 0.0 <= self.restart_share <= 1.0:
            raise ValueError("the restarted share of killed nodes is from 0 to 1")
        if self.byzantine_mode not in MODES:
            raise ValueError(f"--byzantine-mode is one of {', '.join(MODES)}")
        if self.kill_fraction + self.byzantine_fraction >= 1.0:
            raise ValueError("killed and byzantine nodes must leave some honest survivors")
        if self.replicas is not None and self.replicas < 0:
            raise ValueError("replicas must be 0 or more")
        if self.kill_supernode and self.supernode_replicas < 2:
            raise ValueError("--kill-supernode needs at least two replicas")

    @property
    def supernode_replicas(self) -> int:
        if self.replicas is not None:
            return self.replicas
        return 2 if self.kill_supernode or self.restart_redis else 0

    def fault_free(self) -> FaultConfig:
        """The same layout with nothing broken: the run a fault run is compared with."""
        return FaultConfig(replicas=self.supernode_replicas)

    def describe(self) -> str:
        parts = []
        if self.kill_fraction:
            parts.append(f"{self.kill_fraction:.0%} of nodes killed ({self.restart_share:.0%} restarted)")
        if self.byzantine_fraction:
            parts.append(f"{self.byzantine_fraction:.0%} byzantine ({self.byzantine_mode})")
        if self.flaky_upstream:
            parts.append(f"registry fails {self.flaky_upstream:.0%} of requests")
        if self.kill_supernode:
            parts.append("supernode owner killed")
        if self.restart_redis:
            parts.append("redis-server killed and restarted")
        layout = self.supernode_replicas
        parts.append(f"{layout} supernode replicas on Redis" if layout else "one supernode in memory")
        return "; ".join(parts)


@dataclass(frozen=True, slots=True)
class Kill:
    node: int
    at: float  # seconds after the start
    restart: bool


@dataclass(frozen=True, slots=True)
class FaultPlan:
    byzantine: frozenset[int] = frozenset()
    kills: tuple[Kill, ...] = ()
    supernode_kill_at: float | None = None
    redis_restart_at: float | None = None

    @classmethod
    def draw(cls, config: FaultConfig, nodes: int, bound: float, seed: int) -> FaultPlan:
        """The plan for a surge of ``nodes`` whose bound is ``bound`` seconds. Killed nodes
        are the last indices (each runs in its own process; nodes are alike otherwise)."""
        rng = random.Random(seed)
        killed = round(config.kill_fraction * nodes)
        restarted = set(rng.sample(range(killed), round(killed * config.restart_share)))
        low, high = KILL_WINDOW
        kills = [
            Kill(nodes - killed + i, rng.uniform(low, high) * bound, i in restarted) for i in range(killed)
        ]
        liars = frozenset(rng.sample(range(nodes - killed), round(config.byzantine_fraction * nodes)))
        return cls(
            byzantine=liars,
            kills=tuple(sorted(kills, key=lambda k: k.at)),
            supernode_kill_at=SUPERNODE_KILL_AT * bound if config.kill_supernode else None,
            redis_restart_at=REDIS_RESTART_AT * bound if config.restart_redis else None,
        )

    @property
    def alone(self) -> list[int]:
        """Nodes that run in a process of their own (to be killed)."""
        return sorted(k.node for k in self.kills)


@dataclass(frozen=True, slots=True)
class NodeFaults:
    """A worker's share of a fault run (pickled into its process)."""

    byzantine: frozenset[int]
    mode: str
    layer_sizes: tuple[int, ...]
    image_seed: int
    """The worker builds the image too, and audits every byte its runtimes receive."""
    timeout: float
    """Seconds after the start a runtime keeps retrying a failed pull."""


@dataclass(slots=True)
class FaultInjector:
    """Plays the plan's timeline from ``start_at`` (wall clock): kills and restarts nodes,
    kills the supernode owner, restarts Redis; notes what it did and when."""

    plan: FaultPlan
    workers: list[Worker]
    """Every worker of the run; restarted nodes' workers are appended."""
    alone: dict[int, Worker]
    """The worker of each node that runs alone."""
    restart: Callable[[int, float], Worker]
    """Starts a node's worker again; it pulls at once (given the original start)."""
    finished: Callable[[int], bool]
    """Whether a node already reported its pull done (it is not killed then)."""
    control: ControlPlane | None
    task_ids: list[str]
    dead: set[int] = field(default_factory=set)
    """ids of the pipes of killed workers (their end of file is no error)."""
    timeline: list[tuple[float, str]] = field(default_factory=list)
    killed: set[int] = field(default_factory=set)
    restarted: set[int] = field(default_factory=set)

    @property
    def gone(self) -> set[int]:
        """Nodes killed and not started again: not survivors."""
        return self.killed - self.restarted

    async def run(self, start_at: float) -> None:
        steps: list[tuple[float, str, Callable[[], object]]] = []
        for kill in self.plan.kills:
            steps.append((kill.at, "kill", lambda n=kill.node: self._kill(n)))
            if kill.restart:
                at = kill.at + RESTART_DELAY
                steps.append((at, "restart", lambda n=kill.node: self._restart(n, start_at)))
        if self.plan.supernode_kill_at is not None and self.control is not None:
            steps.append((self.plan.supernode_kill_at, "supernode", self._kill_owner))
        if self.plan.redis_restart_at is not None and self.control is not None:
            steps.append((self.plan.redis_restart_at, "redis", self.control.restart_redis))
        steps.sort(key=lambda s: s[0])
        for at, _, act in steps:
            await asyncio.sleep(max(0.0, start_at + at - time.time()))
            note = await act()  # type: ignore[misc]
            self.timeline.append((time.time() - start_at, str(note)))

    async def _kill(self, node: int) -> str:
        if self.finished(node):
            return f"node{node} had finished: not killed"
        process, conn = self.alone[node]
        self.dead.add(id(conn))
        process.kill()  # SIGKILL
        await asyncio.to_thread(process.join)
        self.killed.add(node)
        return f"node{node} killed (SIGKILL)"

    async def _restart(self, node: int, start_at: float) -> str:
        if node not in self.killed:
            return f"node{node} was not killed: not restarted"
        worker = await asyncio.to_thread(self.restart, node, start_at)
        self.alone[node] = worker
        self.workers.append(worker)
        self.restarted.add(node)
        return f"node{node} restarted on its data dir"

    async def _kill_owner(self) -> str:
        assert self.control is not None
        return await self.control.kill_owner(self.task_ids)


async def stop_task(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
