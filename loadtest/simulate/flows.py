"""A flow-level network: transfers as flows whose rates follow the links they share.

Each node has an upload and a download capacity (bytes per second). A flow's rate is
the smaller of its source's upload shared equally among the source's flows and its
receiver's download shared equally among the receiver's flows. When a flow starts or
ends, only the flows at its two ends change rate, so an event costs O(flows per node).
With ``reprice=False`` a flow keeps the rate it started with (O(1) per event, for very
large runs; the shares are right on average while nodes keep their transfer count).
Completions are kept in a heap with lazy invalidation: a flow whose rate changed gets a
new version and its old heap entry is skipped.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable


class Link:
    """One node's capacities and the flows on them."""

    __slots__ = ("down", "down_flows", "up", "up_flows")

    def __init__(self, up: float, down: float) -> None:
        self.up = up
        self.down = down
        # Insertion-ordered, so a run is the same every time (sets order by address).
        self.up_flows: dict[Flow, None] = {}
        self.down_flows: dict[Flow, None] = {}


class Flow:
    __slots__ = ("dst", "payload", "rate", "remaining", "size", "src", "updated", "version")

    def __init__(self, src: Link, dst: Link, size: float, payload: object, now: float) -> None:
        self.src = src
        self.dst = dst
        self.size = size
        self.remaining = size
        self.payload = payload
        self.rate = 0.0
        self.updated = now
        self.version = 0


class Network:
    """Flows over links, in simulated time. ``on_done(flow, now)`` is called at the end."""

    def __init__(self, on_done: Callable[[Flow, float], None], reprice: bool = True) -> None:
        self._on_done = on_done
        self._reprice_all = reprice
        self._heap: list[tuple[float, int, int, Flow]] = []
        self._seq = itertools.count()
        self.now = 0.0
        self.bytes_moved = 0.0

    def start(self, src: Link, dst: Link, size: float, payload: object) -> Flow:
        flow = Flow(src, dst, size, payload, self.now)
        src.up_flows[flow] = None
        dst.down_flows[flow] = None
        if self._reprice_all:
            self._reprice(src, dst)
        else:
            self._price(flow, min(src.up / len(src.up_flows), dst.down / len(dst.down_flows)))
        return flow

    def cancel(self, flow: Flow) -> None:
        """End a flow early (its source or receiver failed); no ``on_done``."""
        if flow in flow.src.up_flows:
            self._remove(flow)

    def next_time(self) -> float:
        """When the next flow ends (inf: none under way)."""
        heap = self._heap
        while heap:
            when, _, version, flow = heap[0]
            if version == flow.version:  # not repriced or removed since
                return when
            heapq.heappop(heap)
        return math.inf

    def step(self, until: float) -> bool:
        """End the next flow if it ends by ``until`` (its ``on_done`` may start flows and
        schedule what comes before the next one); whether one ended."""
        when = self.next_time()
        if when > until:
            return False
        _, _, _, flow = heapq.heappop(self._heap)
        if when > self.now:
            self.now = when
        flow.remaining, flow.updated = 0.0, self.now  # it is done: nothing left to settle
        self.bytes_moved += flow.size
        self._remove(flow)
        self._on_done(flow, self.now)
        return True

    def advance(self, until: float) -> None:
        """Run flows up to ``until``, ending each that completes by then."""
        while self.step(until):
            pass
        if until > self.now:
            self.now = until

    # ------------------------------------------------------------------ internals

    def _remove(self, flow: Flow) -> None:
        del flow.src.up_flows[flow]
        del flow.dst.down_flows[flow]
        flow.version += 1
        if self._reprice_all:
            self._reprice(flow.src, flow.dst)

    def _settle(self, flow: Flow) -> None:
        flow.remaining = max(0.0, flow.remaining - flow.rate * (self.now - flow.updated))
        flow.updated = self.now

    def _reprice(self, src: Link, dst: Link) -> None:
        """New rates for the flows at the two links an event touched. Each link's capacity
        is water-filled among its flows, a flow asking at most the equal share its other
        end offers it: a flow held back elsewhere leaves its share to the others, as TCP
        (and the daemons' limiters) would, instead of leaving it unused."""
        up = _waterfill(src.up, src.up_flows, lambda f: f.dst.down / len(f.dst.down_flows))
        down = _waterfill(dst.down, dst.down_flows, lambda f: f.src.up / len(f.src.up_flows))
        for flow in src.up_flows | dst.down_flows:
            self._settle(flow)
            a = up.get(flow)
            b = down.get(flow)
            if a is None:
                a = flow.src.up / len(flow.src.up_flows)
            if b is None:
                b = flow.dst.down / len(flow.dst.down_flows)
            self._price(flow, min(a, b))

    def _price(self, flow: Flow, rate: float) -> None:
        if rate == flow.rate and flow.version:
            return
        flow.rate = rate
        flow.version += 1
        when = self.now + (flow.remaining / rate if rate > 0 else math.inf)
        heapq.heappush(self._heap, (when, next(self._seq), flow.version, flow))


def _waterfill(
    capacity: float, flows: dict[Flow, None], demand: Callable[[Flow], float]
) -> dict[Flow, float]:
    """Max-min fair shares of ``capacity`` among ``flows``, each wanting ``demand(flow)``."""
    if not flows:
        return {}
    if math.isinf(capacity):
        return {f: demand(f) for f in flows}
    wants = sorted((demand(f), i, f) for i, f in enumerate(flows))
    left, n = capacity, len(wants)
    out = {}
    for want, _, flow in wants:
        share = left / n
        got = want if want < share else share
        out[flow] = got
        left -= got
        n -= 1
    return out
