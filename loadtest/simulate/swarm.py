"""A discrete-event simulation of a surge, driving the production scheduler.

Nothing here decides where a piece comes from: ``supernode.scheduler.Scheduler`` does,
exactly as in the supernode. This module plays the parts around it: the supernode's
service (events in, decisions delivered), the back-to-source read (pieces seeded at the
registry's rate, in order), and every peer daemon (sync after each finished transfer,
park when idle, poll while transfers run, cancel an endgame twin). Transfers are flows on
a ``Network`` whose rates follow the links they share.

Options model what a real cluster has: heterogeneous links (a share of slow nodes),
nodes joining over a window of time, and a share of nodes failing mid-run.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import time
from dataclasses import dataclass, field

from loadtest.report import ModeResult, kumar_ross_bound
from loadtest.simulate.flows import Flow, Link, Network
from supernode.scheduler import (
    Assignment,
    Decisions,
    Failure,
    FailureReason,
    Scheduler,
    SchedulerConfig,
    Timing,
)
from swarmpull.core.geometry import PieceGeometry, choose_piece_size

TASK = "sha256-" + "5" * 64
SEED = "seed"


@dataclass(frozen=True, slots=True)
class SimConfig:
    nodes: int = 1000
    image_size: int = 64 << 20
    piece_size: int | None = None
    """None: the supernode's rule (swarmpull.core.geometry)."""
    node_up: float = 12.5e6
    """Upload bytes per second of a node."""
    node_down: float = 12.5e6
    """Download bytes per second of a node."""
    registry_rate: float = 25e6
    """Bytes per second the registry sends (the supernode's single read)."""
    seed_up: float | None = None
    """The seed's upload; None: the registry's rate."""
    seed_slots: int = 16
    upload_slots: int = 8
    download_slots: int = 16
    pace: float = 0.1
    """Concurrent transfers per node: as many as its link moves at a piece per pace each."""
    poll_interval: float = 1.0
    heartbeat_interval: float = 5.0
    rtt: float = 0.0005
    """Network round trip: a transfer starts two of them after it was assigned (the sync
    answer, then the piece request)."""
    join_window: float = 0.0
    """Nodes join at uniform random times in [0, join_window]."""
    fail_fraction: float = 0.0
    """This share of the nodes fails at a uniform random time in [0, fail_window]."""
    fail_window: float = 10.0
    slow_fraction: float = 0.0
    """This share of the nodes has links slow_factor times the others'."""
    slow_factor: float = 0.25
    seed: int = 1
    timeout: float = 3600.0
    """Simulated seconds before the run stops; nodes not done count as failed."""
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.image_size < 1:
            raise ValueError("a simulation needs at least one node and one byte")
        if min(self.node_up, self.node_down, self.registry_rate) <= 0:
            raise ValueError("link rates must be positive")
        for name in ("fail_fraction", "slow_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")

    @property
    def seed_rate(self) -> float:
        return self.seed_up if self.seed_up is not None else self.registry_rate

    def geometry(self) -> PieceGeometry:
        return PieceGeometry(self.image_size, self.piece_size or choose_piece_size(self.image_size))


class _Node:
    __slots__ = (
        "done_at",
        "failed",
        "finished",
        "flights",
        "id",
        "joined",
        "joined_at",
        "link",
        "pending",
        "poll",
    )

    def __init__(self, node_id: str, link: Link) -> None:
        self.id = node_id
        self.link = link
        self.joined = False
        self.joined_at = 0.0
        self.failed = False
        self.done_at: float | None = None
        self.finished = 0
        self.flights: dict[int, list[Flow]] = {}
        self.pending: tuple[list[int], list[Failure], list[Timing]] = ([], [], [])
        self.poll = 0  # version of the scheduled poll


class SwarmSimulation:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.geometry = config.geometry()
        self._rng = random.Random(config.seed)
        self.scheduler = Scheduler(config.scheduler, random.Random(config.seed + 1))
        self.scheduler.add_seed(SEED, config.seed_slots, config.seed_rate)
        self.scheduler.add_task(TASK, self.geometry.count, SEED, self.geometry.piece_size)
        self.network = Network(self._flow_done)
        self._seed_link = Link(config.seed_rate, math.inf)
        self._events: list[tuple[float, int, str, object]] = []
        self._seq = itertools.count()
        self.nodes: dict[str, _Node] = {}
        self.syncs = 0
        self._open = config.nodes  # nodes neither done nor failed
        self.sources = {"peer": 0.0, "seed": 0.0}  # bytes received, by kind of source
        self._egress: list[tuple[float, int]] = [(0.0, 0)]  # registry bytes sent over time
        self._build()

    def _build(self) -> None:
        c = self.config
        slow = set(self._rng.sample(range(c.nodes), int(c.nodes * c.slow_fraction)))
        failing = set(self._rng.sample(range(c.nodes), int(c.nodes * c.fail_fraction)))
        for i in range(c.nodes):
            factor = c.slow_factor if i in slow else 1.0
            node = _Node(f"n{i}", Link(c.node_up * factor, c.node_down * factor))
            self.nodes[node.id] = node
            self._at(self._rng.uniform(0, c.join_window) if c.join_window else 0.0, "join", node)
            if i in failing:
                self._at(self._rng.uniform(0, c.fail_window), "fail", node)
        t = 0.0
        for piece in range(self.geometry.count):  # the registry streams the blob once, in order
            t += self.geometry.length(piece) / c.registry_rate
            self._at(t, "seeded", piece)
        self._at(1.0, "tick", None)
        self._at(c.heartbeat_interval, "heartbeat", None)

    def _at(self, when: float, kind: str, data: object) -> None:
        heapq.heappush(self._events, (when, next(self._seq), kind, data))

    # --------------------------------------------------------------------- run

    def run(self) -> ModeResult:
        """Run until every node is done or failed (or the timeout); the report."""
        started = time.process_time()
        while self._open and self._events:
            when, _, kind, data = self._events[0]
            if when > self.config.timeout:
                break
            flow_end = self.network.next_time()
            if flow_end <= when:
                self.network.advance(flow_end)
                continue
            heapq.heappop(self._events)
            self.network.advance(when)
            getattr(self, f"_on_{kind}")(data)
        return self._result(time.process_time() - started)

    # ------------------------------------------------------------------ events

    def _on_join(self, node: _Node) -> None:
        node.joined = True
        node.joined_at = self.now
        self.scheduler.peer_joined(node.id, self.now, slots=self.config.upload_slots, capacity=node.link.up)
        self._sync(node)

    def _on_seeded(self, piece: int) -> None:
        self._egress.append((self.now, self._egress[-1][1] + self.geometry.length(piece)))
        self._deliver(self.scheduler.piece_seeded(TASK, piece, self.now))

    def _on_tick(self, _: object) -> None:
        self._deliver(self.scheduler.expire(self.now))
        self._at(self.now + 1.0, "tick", None)

    def _on_heartbeat(self, _: object) -> None:
        """Live peers heartbeat (done ones too: they still serve); failed ones fall silent."""
        for node in self.nodes.values():
            if node.joined and not node.failed:
                self.scheduler.peer_seen(node.id, self.now)
        self._at(self.now + self.config.heartbeat_interval, "heartbeat", None)

    def _on_fail(self, node: _Node) -> None:
        if node.done_at is not None or node.failed:
            return
        node.failed = True
        self._open -= 1
        self.scheduler.unpark(TASK, node.id)  # its long poll died with it
        for flights in node.flights.values():
            for flow in flights:
                self.network.cancel(flow)
        node.flights.clear()
        for flow in list(node.link.up_flows):  # its requesters see the connection drop
            self.network.cancel(flow)
            requester, piece, _ = flow.payload  # type: ignore[misc]
            other = self.nodes[requester]
            other.flights[piece].remove(flow)
            if not other.flights[piece]:
                del other.flights[piece]
            other.pending[1].append(Failure(piece, node.id, FailureReason.UNREACHABLE))
            self._sync(other)

    def _on_poll(self, data: tuple[_Node, int]) -> None:
        node, version = data
        if node.poll == version and not node.failed and node.done_at is None:
            self._sync(node)

    def _flow_done(self, flow: Flow, now: float) -> None:
        requester, piece, source = flow.payload  # type: ignore[misc]
        node = self.nodes[requester]
        twins = node.flights.pop(piece, [])
        for twin in twins:  # the first copy wins; an endgame twin is cancelled
            if twin is not flow:
                self.network.cancel(twin)
        self.sources["seed" if source == SEED else "peer"] += flow.size
        finished, _, timings = node.pending
        finished.append(piece)
        timings.append(Timing(piece, source, int(flow.size), now - flow.started))
        node.finished += 1
        if node.finished == self.geometry.count:
            node.done_at = now
            self._open -= 1
        self._sync(node)

    # --------------------------------------------------------------- the peer

    @property
    def now(self) -> float:
        return self.network.now

    def _want(self, node: _Node) -> int:
        c = self.config
        cap = c.download_slots
        if math.isfinite(node.link.down):
            cap = min(cap, max(1, int(node.link.down * c.pace / self.geometry.piece_size)))
        return max(0, cap - len(node.flights))

    def _sync(self, node: _Node) -> None:
        """What a peer does after a transfer ends, a poll is due, or it joins."""
        finished, failed, timings = node.pending
        node.pending = ([], [], [])
        done = node.done_at is not None
        want = 0 if done else self._want(node)
        self.syncs += 1
        decisions = self.scheduler.sync(
            TASK, node.id, self.now, finished=finished, failed=failed, timings=timings,
            want=want, park=not node.flights and not done,
        )  # fmt: skip
        self._deliver(decisions)
        if node.flights and not done:  # as a peer does: poll often only in the endgame
            node.poll += 1
            at_the_end = self.geometry.count - node.finished <= len(node.flights)
            interval = self.config.poll_interval * (1 if at_the_end else 5)
            self._at(self.now + interval, "poll", (node, node.poll))

    def _deliver(self, decisions: Decisions) -> None:
        for (_, peer_id), batch in decisions.assignments.items():
            self._at(self.now + 2 * self.config.rtt, "assigned", (self.nodes[peer_id], batch))

    def _on_assigned(self, data: tuple[_Node, list[Assignment]]) -> None:
        node, batch = data
        if node.failed:
            self._deliver(self.scheduler.abandon(TASK, node.id, [a.piece for a in batch], self.now))
            return
        for assignment in batch:
            if assignment.source != SEED and self.nodes[assignment.source].failed:
                node.pending[1].append(
                    Failure(assignment.piece, assignment.source, FailureReason.UNREACHABLE)
                )
                self._sync(node)
                continue
            source = self._seed_link if assignment.source == SEED else self.nodes[assignment.source].link
            size = self.geometry.length(assignment.piece)
            flow = self.network.start(source, node.link, size, (node.id, assignment.piece, assignment.source))
            node.flights.setdefault(assignment.piece, []).append(flow)

    # ------------------------------------------------------------------ report

    def _result(self, cpu: float) -> ModeResult:
        c = self.config
        nodes = list(self.nodes.values())
        times = [n.done_at - n.joined_at for n in nodes if n.done_at is not None]
        ups = [n.link.up for n in nodes]
        origin = min(c.registry_rate, c.seed_rate)
        bound = kumar_ross_bound(
            c.image_size, c.nodes, origin, sum(ups) / len(ups), min(n.link.down for n in nodes)
        )
        return ModeResult(
            mode="p2p (simulated)",
            nodes=c.nodes,
            completed=len(times),
            failed=c.nodes - len(times),
            image_size=c.image_size,
            registry_egress=c.image_size,
            completion_times=times,
            bound=bound,
            wall_time=max(times) if times else math.nan,
            extra={"scheduler syncs": self.syncs, "simulator CPU s": round(cpu, 1)},
            egress_timeline=self._egress,
            sources=dict(self.sources),
        )


def simulate_direct(config: SimConfig) -> ModeResult:
    """Every node pulls the whole image from the registry, which shares its bandwidth."""
    size, nodes = config.image_size, config.nodes
    bound = kumar_ross_bound(size, nodes, config.registry_rate, 0.0, config.node_down)
    if config.join_window:
        done, moved = _direct_flows(config, bound)
    else:  # all at once: an equal share each, so all finish together (and the flow model is O(N^2))
        done, moved = [bound] * nodes, size * nodes
    end = max(done) if done else 0.0
    timeline = [(0.0, 0), (end, moved)]  # the registry streams at its rate
    return ModeResult(
        mode="direct (simulated)",
        nodes=config.nodes,
        completed=len(done),
        failed=config.nodes - len(done),
        image_size=config.image_size,
        registry_egress=moved,
        completion_times=done,
        bound=bound,
        wall_time=max(done) if done else math.nan,
        egress_timeline=timeline,
        sources={"upstream": float(moved)},
    )


def _direct_flows(config: SimConfig, bound: float) -> tuple[list[float], int]:
    """Nodes joining over a window: one flow each through the shared registry link."""
    rng = random.Random(config.seed)
    done: list[float] = []
    joined: dict[int, float] = {}
    network = Network(lambda flow, now: done.append(now - joined[flow.payload]))  # type: ignore[index]
    registry = Link(config.registry_rate, math.inf)
    starts = sorted((rng.uniform(0, config.join_window), i) for i in range(config.nodes))
    for when, i in starts:
        network.advance(when)
        joined[i] = when
        network.start(registry, Link(math.inf, config.node_down), config.image_size, i)
    network.advance(config.join_window + 2 * bound)  # no timeout: how long it takes is the point
    return done, int(network.bytes_moved)
