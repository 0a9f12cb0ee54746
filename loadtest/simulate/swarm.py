"""A discrete-event simulation of a surge, driving the production decision code.

Nothing here decides who fetches what from whom: ``supernode.scheduler.Scheduler``
chooses every node's parents, exactly as in the supernode, and ``peer.policy.PiecePolicy``
chooses every piece, exactly as in the peer daemon. This module plays the parts around
them (their state: ``parts``):

- **The supernode's service, charged.** Every call a node makes crosses the network
  (``rtt / 2`` each way) and waits its turn in one queue per task owner (the supernode
  is one event loop): it is served for what that kind of call costs the real supernode
  (``service``: a call, plus each task beyond the first it carries; measured by
  ``swarmpull benchmarks supernode``), and its effect on the scheduler happens when it
  is served. A node calls as the daemon's control channel does (``peer.control``): its
  layers open in one call, and its reports go together, those due and those nearly due,
  one call at a time; its open channel is its heartbeat, so a node that fails is
  forgotten ``peer_timeout`` after it fell silent (or sooner, on its children's word).
- **The back-to-source read:** the registry streams each layer once, in order, the layers
  side by side at the registry's rate; a piece is the seed's when it has arrived.
- **Every peer daemon:** opens each layer's task, fetches what its policy chooses within
  the node's download slots, all layers together (a transfer starts one ``rtt`` after it
  is chosen, and is timed from then), reports when its policy asks for
  parents, when a layer completes, and at the interval the supernode sets
  (``supernode.pacing``).
- **The network:** each transfer is a flow; ``exact`` reprices the flows at both ends of
  every start and end (``flows.Network``); ``fast`` fixes a flow's rate when it starts.

A node sees its parents' current piece maps (the daemon gets them within a round trip,
with every piece it fetches and by long polls). Options add slow nodes, nodes joining
over a window, and nodes failing mid-run.
"""

from __future__ import annotations

import gc
import heapq
import itertools
import math
import random
import time
from collections.abc import Callable

from loadtest.report import ModeResult, kumar_ross_bound
from loadtest.simulate.config import SimConfig
from loadtest.simulate.flows import Flow, Link, Network
from loadtest.simulate.parts import Bits, Download, Layer, Node, Uploads
from peer.policy import PiecePolicy
from supernode.pacing import report_interval
from supernode.scheduler import ParentReport, Scheduler
from swarmpull.core.failures import FailureReason
from swarmpull.core.geometry import PieceGeometry, choose_piece_size
from swarmpull.core.rates import Priority

SEED = "seed"
REPORT_BATCH_WINDOW = 0.02  # as peer.control: an urgent report waits this long for others


class SwarmSimulation:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)
        self.layers = [
            Layer(i, PieceGeometry(size, config.piece_size or choose_piece_size(size)))
            for i, size in enumerate(config.layer_sizes())
        ]
        self.scheduler = Scheduler(config.scheduler, random.Random(config.seed + 1))
        # A node's open channel is its heartbeat: it is forgotten only once it fails.
        self.scheduler.peer_timeout = math.inf
        self.scheduler.add_seed(SEED, config.seed_rate)
        for layer in self.layers:
            self.scheduler.add_task(layer.id, layer.geometry.count, SEED)
        self.network = Network(self._flow_done, reprice=config.network == "exact")
        self._seed = Uploads(Link(config.seed_rate, math.inf), config.seed_slots)
        self._events: list[tuple[float, int, str, object]] = []
        self._seq = itertools.count()
        self.nodes: dict[str, Node] = {}
        self._busy = [0.0] * config.owners  # when each owner's queue is free
        self.calls: dict[str, int] = {"open": 0, "report": 0}
        self.tasks_carried = 0  # tasks the calls carried (a call carries one or more)
        self.supernode_busy = 0.0  # seconds of supernode time charged
        self._open = config.nodes  # nodes neither done nor failed
        self.sources = {"peer": 0.0, "seed": 0.0}  # bytes received, by kind of source
        self._egress: list[tuple[float, int]] = [(0.0, 0)]  # registry bytes sent over time
        self._seed_waiting: dict[str, dict[Node, None]] = {}  # task -> nodes waiting on the seed
        self._build()

    def _build(self) -> None:
        c = self.config
        slow = set(self._rng.sample(range(c.nodes), int(c.nodes * c.slow_fraction)))
        failing = set(self._rng.sample(range(c.nodes), int(c.nodes * c.fail_fraction)))
        for i in range(c.nodes):
            factor = c.slow_factor if i in slow else 1.0
            link = Link(c.node_up * factor, c.node_down * factor)
            node = Node(f"n{i}", link, Uploads(link, c.upload_slots))
            self.nodes[node.id] = node
            self.scheduler.peer_joined(node.id, 0.0, serves=True, capacity=node.link.up)
            self._at(self._rng.uniform(0, c.join_window) if c.join_window else 0.0, "join", node)
            if i in failing:
                self._at(self._rng.uniform(0, c.fail_window), "fail", node)
        self._seed_layers()
        self._at(1.0, "tick", None)

    def _seed_layers(self) -> None:
        """The registry streams every layer once, side by side, at its rate."""
        rate = self.config.registry_rate
        remaining = {layer.index: layer.geometry.size for layer in self.layers}
        cursor = dict.fromkeys(remaining, 0)  # next piece per layer
        t, sent = 0.0, 0
        while remaining:
            share = rate / len(remaining)

            # the next layer to finish its current piece at the equal share
            def left(index: int) -> float:
                layer = self.layers[index]
                end = layer.geometry.offset(cursor[index]) + layer.geometry.length(cursor[index])
                return end - (layer.geometry.size - remaining[index])

            index = min(remaining, key=left)
            step = left(index) / share
            t += step
            for other in remaining:
                remaining[other] -= step * share
            sent += self.layers[index].geometry.length(cursor[index])
            self._at(t, "seeded", (self.layers[index], cursor[index], sent))
            cursor[index] += 1
            if cursor[index] == self.layers[index].geometry.count:
                del remaining[index]

    def _at(self, when: float, kind: str, data: object) -> None:
        heapq.heappush(self._events, (when, next(self._seq), kind, data))

    @property
    def now(self) -> float:
        return self.network.now

    # --------------------------------------------------------------------- run

    def run(self) -> ModeResult:
        """Run until every node is done or failed (or the timeout); the report.

        The cyclic garbage collector is off meanwhile: a run makes no reference cycles
        (a 3000-node run left none to collect), and at 100,000 nodes each of its full
        passes walks millions of live objects for nothing. Memory is still freed as
        references drop."""
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._run()
        finally:
            if collecting:
                gc.enable()

    def _run(self) -> ModeResult:
        started = time.process_time()
        events, network, timeout = self._events, self.network, self.config.timeout
        handlers: dict[str, Callable[[object], None]] = {}
        while self._open and events:
            when, _, kind, data = events[0]
            if when > timeout:
                break
            if network.step(when):  # a flow ended first (what it started may come first too)
                continue
            heapq.heappop(events)
            network.advance(when)
            handler = handlers.get(kind)
            if handler is None:
                handler = handlers[kind] = getattr(self, f"_on_{kind}")
            handler(data)
        return self._result(time.process_time() - started)

    # ---------------------------------------------------------------- supernode

    def _call(self, kind: str, node: Node, downloads: list[Download], then: str) -> None:
        """A call to the supernode carrying ``downloads`` (all of one owner): it arrives
        after half a round trip, waits for the owner's queue, is served for its cost;
        ``then`` runs at the owner when served."""
        c = self.config
        owner = self._owner(downloads[0].layer)
        arrival = self.now + c.rtt / 2
        start = max(arrival, self._busy[owner])
        cost = c.service[kind] + (len(downloads) - 1) * c.service[f"{kind}_task"]
        self._busy[owner] = start + cost
        self.supernode_busy += cost
        self.calls[kind] += 1
        self.tasks_carried += len(downloads)
        node.calling += 1
        if kind == "report":
            payload = [(d, d.policy.have, *d.policy.take_report(self.now)) for d in downloads]
            for download in downloads:
                download.due = math.inf  # until the answer says when
            self._at(start + cost, then, (node, payload))
        else:
            self._at(start + cost, then, (node, downloads))

    def _owner(self, layer: Layer) -> int:
        """The replica owning ``layer``'s task: the layers in turn, so the same run gives
        the same figures every time (``hash`` of a string changes from one process to the
        next). A task's lease goes to the replica that opens it first; with the nodes'
        calls spread over the replicas, so are the tasks."""
        return layer.index % self.config.owners

    def _by_owner(self, downloads: list[Download]) -> list[list[Download]]:
        groups: dict[int, list[Download]] = {}
        for download in downloads:
            groups.setdefault(self._owner(download.layer), []).append(download)
        return list(groups.values())

    def every(self, interval: float, call: Callable[[SwarmSimulation], None]) -> None:
        """``call(self)`` every ``interval`` simulated seconds (it must only read:
        ``loadtest.simulate.trace``)."""
        self._at(self.now + interval, "call", (interval, call))

    def _on_call(self, data: tuple[float, Callable[[SwarmSimulation], None]]) -> None:
        interval, call = data
        call(self)
        self._at(self.now + interval, "call", data)

    def _on_tick(self, _: object) -> None:
        self.scheduler.expire(self.now)
        self._at(self.now + 1.0, "tick", None)

    def _on_gone(self, node: Node) -> None:
        """A failed node's silence has lasted the supernode's peer timeout."""
        self.scheduler.peer_left(node.id, self.now)

    def _on_seeded(self, data: tuple[Layer, int, int]) -> None:
        layer, piece, sent = data
        self._egress.append((self.now, sent))
        self.scheduler.piece_seeded(layer.id, piece)
        layer.seeded.bits |= 1 << piece
        self._wake(self._seed_waiting.get(layer.id, {}), layer.id)

    # --------------------------------------------------------------- the nodes

    def _on_join(self, node: Node) -> None:
        node.joined = True
        node.joined_at = self.now
        for layer in self.layers:
            g = layer.geometry
            policy = PiecePolicy(
                g.count, g.piece_size, self.config.policy, random.Random(self._rng.random()),
                download_rate=node.link.down,
            )  # fmt: skip
            node.downloads[layer.id] = Download(layer, policy)
        for group in self._by_owner(list(node.downloads.values())):  # one call: the layers together
            self._call("open", node, group, "opened")

    def _on_opened(self, data: tuple[Node, list[Download]]) -> None:
        node, downloads = data
        if node.failed:
            return
        answers = [(d, self.scheduler.join(d.layer.id, node.id, d.policy.have, self.now)) for d in downloads]
        self._at(self.now + self.config.rtt / 2, "answer", (node, answers))

    def _report_soon(self, node: Node, download: Download) -> None:
        """The download needs to report now (it needs parents, or it completed)."""
        download.due = 0.0
        self._flush_in(node, REPORT_BATCH_WINDOW)

    def _flush_in(self, node: Node, delay: float) -> None:
        when = self.now + delay
        if node.calling or node.failed or when >= node.flush_at:
            return
        node.flush_at = when
        self._at(when, "flush", node)

    def _on_flush(self, node: Node) -> None:
        """The control channel sends what is due, and what is nearly due with it."""
        if node.flush_at != self.now or node.calling or node.failed:
            return  # a stale wake-up, or a call is under way (its answer looks again)
        node.flush_at = math.inf
        downloads = node.downloads.values()
        if not any(d.due <= self.now for d in downloads):
            self._flush_in(node, min((d.due for d in downloads), default=math.inf) - self.now)
            return
        due = [d for d in downloads if d.due - d.every / 2 <= self.now]
        for group in self._by_owner(due):
            self._call("report", node, group, "reported")

    def _on_reported(self, data: tuple) -> None:  # type: ignore[type-arg]
        node, payload = data
        if node.failed:
            return
        answers = []
        for download, have, reports, dropped, bad in payload:
            parents, _ = self.scheduler.report(
                download.layer.id,
                node.id,
                self.now,
                have=have,
                parents=[
                    ParentReport(p, r.bytes, r.seconds, r.failures, r.reason) for p, r in reports.items()
                ],
                drop=dropped,
                bad=bad,
            )
            answers.append((download, parents))
        self._at(self.now + self.config.rtt / 2, "answer", (node, answers))

    def _on_answer(self, data: tuple) -> None:  # type: ignore[type-arg]
        node, answers = data
        node.calling -= 1
        if node.failed:
            return
        for download, parents in answers:
            task = download.layer.id
            for link in download.policy.parents.values():
                self._watchers(link.id, task).pop(node, None)
            views = []
            for parent in parents:
                if parent.seed:
                    views.append((parent.id, True, download.layer.seeded))
                else:
                    other = self.nodes[parent.id]
                    views.append(
                        (parent.id, False, other.downloads[task].map if task in other.downloads else Bits())
                    )
            download.policy.set_parents(views)
            if download not in node.share:  # fetching from now on, as the daemon's SwarmFetch
                node.share.join(
                    download, Priority.FOREGROUND, download.policy.projected, self._waker(node, download)
                )
            members = self.scheduler.members(task)
            download.every = report_interval(members, self.config.supernode, self._rng.random())
            if download.done_at is None:
                if download.due != 0.0:  # not asked again while the call was under way
                    download.due = self.now + download.every
            else:
                download.due = math.inf  # complete and said so: it reports no more
        for download, _ in answers:
            self._fill(node, download)
        if not node.calling:
            pending = min((d.due for d in node.downloads.values()), default=math.inf)
            self._flush_in(node, max(REPORT_BATCH_WINDOW if pending <= self.now else 0.0, pending - self.now))

    def _waker(self, node: Node, download: Download) -> Callable[[], None]:
        return lambda: self._fill(node, download)

    def _watchers(self, parent_id: str, task: str) -> dict[Node, None]:
        waiting = self._seed_waiting if parent_id == SEED else self.nodes[parent_id].watchers
        watchers = waiting.get(task)
        if watchers is None:
            watchers = waiting[task] = {}
        return watchers

    def _fill(self, node: Node, download: Download) -> None:
        """Start what the policy chooses; wait on the parents if it chooses nothing."""
        policy = download.policy
        if download.done_at is not None or node.failed:
            return
        room = self.config.download_slots - sum(d.policy.transfers for d in node.downloads.values())
        if room <= 0:
            node.full = True  # it waits for a slot, as the daemon's downloads do
            return
        now = self.network.now
        picks = policy.choose(now, room, ahead=node.share.ahead(download))
        task = download.layer.id
        if picks:  # each one round trip from now, one after another
            self._at(now + self.config.rtt, "transfers", (node, download, picks))
        waiting = not picks and policy.unassigned != 0
        if waiting != download.idle:
            download.idle = waiting
            for link in policy.parents.values():
                watchers = self._watchers(link.id, task)
                if waiting:
                    watchers[node] = None
                else:
                    watchers.pop(node, None)
        if policy.needs_parents(self.now):
            if download.due != 0.0:
                self._report_soon(node, download)
        elif waiting and download.recheck == math.inf:
            # The daemon looks again every ``wake_interval`` while it waits (``SwarmFetch``): a
            # starving or idle parent set is noticed then, not at the next report.
            download.recheck = self.now + download.policy.wake_interval
            self._at(download.recheck, "recheck", (node, download))

    def _on_recheck(self, data: tuple[Node, Download]) -> None:
        node, download = data
        download.recheck = math.inf
        if download.idle:
            self._fill(node, download)

    def _wake(self, nodes: dict[Node, None], task: str) -> None:
        """``task``'s pieces came to a parent or the seed: its waiting children look again."""
        for child in list(nodes):
            download = child.downloads.get(task)
            if download is not None and download.idle:
                download.idle = False
                self._fill(child, download)

    def _on_transfers(self, data: tuple[Node, Download, list[tuple[int, str]]]) -> None:
        node, download, picks = data
        for piece, parent_id in picks:
            self._request((node, download, piece, parent_id))

    def _request(self, data: tuple[Node, Download, int, str]) -> None:
        """A requested piece reaches its source: served, in line, or refused."""
        node, download, piece, parent_id = data
        copies = download.policy.inflight.get(piece)
        if node.failed or copies is None or parent_id not in copies:
            return  # gone, or cancelled in the meantime (an endgame twin won)
        if parent_id == SEED:
            uploads = self._seed
        else:
            parent = self.nodes[parent_id]
            if parent.failed:
                self._refused(node, download, piece, parent_id, FailureReason.UNREACHABLE)
                return
            uploads = parent.uploads
        if uploads.active < uploads.slots:
            self._start_flow(uploads, data)
        elif len(uploads.queue) < uploads.slots:  # the daemon's line: as long as its slots
            uploads.queue.append(data)
        else:  # and one more is refused (429): the requester asks another
            self._refused(node, download, piece, parent_id, FailureReason.BUSY)

    def _refused(
        self, node: Node, download: Download, piece: int, parent_id: str, why: FailureReason
    ) -> None:
        download.policy.failed(piece, parent_id, why, self.now)
        self._fill(node, download)
        self._slot_freed(node)

    def _start_flow(self, uploads: Uploads, data: tuple[Node, Download, int, str]) -> None:
        node, download, piece, parent_id = data
        uploads.active += 1
        size = download.layer.lengths[piece]
        flow = self.network.start(uploads.link, node.link, size, (node, download, piece, parent_id, uploads))
        download.flows[(piece, parent_id)] = flow

    def _upload_ended(self, uploads: Uploads) -> None:
        uploads.active -= 1
        while uploads.queue and uploads.active < uploads.slots:
            node, download, piece, parent_id = waiting = uploads.queue.popleft()
            if not node.failed and parent_id in download.policy.inflight.get(piece, {}):
                self._start_flow(uploads, waiting)

    def _flow_done(self, flow: Flow, now: float) -> None:
        node, download, piece, parent_id, uploads = flow.payload  # type: ignore[misc]
        self._upload_ended(uploads)
        download.flows.pop((piece, parent_id), None)
        policy = download.policy
        # Timed from the choice, as the daemon times a transfer from its request: the round
        # trip and the wait in line for one of the parent's upload slots are part of it.
        asked = policy.inflight[piece][parent_id]
        for twin in policy.finished(piece, parent_id, int(flow.size), now - asked, now):
            other = download.flows.pop((piece, twin), None)
            if other is not None:
                self.network.cancel(other)
                self._upload_ended(other.payload[4])
        download.map.bits |= 1 << piece
        self.sources["seed" if parent_id == SEED else "peer"] += flow.size
        watchers = node.watchers.get(download.layer.id)
        if watchers:
            self._wake(watchers, download.layer.id)
        if policy.done:
            download.done_at = now
            self._report_soon(node, download)  # a complete source now
            if all(d.done_at is not None for d in node.downloads.values()):
                node.done_at = now
                self._open -= 1
            node.share.leave(download)
            self._slot_freed(node)
            return
        self._fill(node, download)
        node.share.changed(download)
        self._slot_freed(node)

    def _slot_freed(self, node: Node) -> None:
        """A transfer of ``node`` ended: the downloads that found no free slot look again."""
        if node.full:
            node.full = False
            for download in node.downloads.values():
                self._fill(node, download)

    def _on_fail(self, node: Node) -> None:
        if node.done_at is not None or node.failed:
            return
        node.failed = True
        self._open -= 1
        self._at(self.now + self.config.scheduler.peer_timeout, "gone", node)
        for download in node.downloads.values():
            for flow in download.flows.values():
                self.network.cancel(flow)
                self._upload_ended(flow.payload[4])
            download.flows.clear()
        waiting = list(node.uploads.queue)
        node.uploads.queue.clear()
        for flow in list(node.link.up_flows):  # its children see the connection drop
            self.network.cancel(flow)
            waiting.append(flow.payload[:4])
            flow.payload[1].flows.pop((flow.payload[2], flow.payload[3]), None)
        for child, download, piece, parent_id in waiting:
            self._refused(child, download, piece, parent_id, FailureReason.UNREACHABLE)

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
        calls = sum(self.calls.values())
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
            extra={
                "supernode calls": calls,
                "tasks per call": round(self.tasks_carried / calls, 2) if calls else None,
                "supernode busy s": round(self.supernode_busy, 2),
                "supernode busy / bound": round(self.supernode_busy / bound, 3) if bound else None,
                "simulator CPU s": round(cpu, 1),
            },
            egress_timeline=self._egress,
            sources=dict(self.sources),
        )
