"""Where a simulated surge's link time went (``swarmpull loadtest --simulate --trace S``).

Every ``S`` simulated seconds it samples the flows: the share of their download links
the nodes not done yet use, and the share of their upload links all nodes use (with the
upload slots taken and the requests in line for one: a parent whose slots are all
taken while its upload is not full serves children held back by their own links); and
per node, how many children its peer parents serve. At the end, ``render`` prints the
samples and, over the samples after the ramp (the nodes' download use reached 90 %) and
before any node was done, the nodes' download use by how crowded their parents were,
and the sources' upload use by how many children they had: a node whose parents serve
many children gets less of its link, and a source with few children leaves its upload
unused.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loadtest.simulate.swarm import SwarmSimulation


@dataclass(slots=True)
class LinkTrace:
    every: float
    steady_at: float = 0.9
    """The nodes' download use that ends the ramp."""
    samples: list[tuple[float, int, float, float, float, float]] = field(default_factory=list)
    """(time, nodes not done, their download use, every node's upload use, the upload slots
    a node has taken and the requests in line for one, both on average over every node)"""
    steady: bool = False
    """The nodes' download use has reached ``steady_at``: the ramp is over."""
    by_crowding: dict[float, list[float]] = field(default_factory=lambda: defaultdict(list))
    """children its parents serve (the mean, to a half) -> a node's download use"""
    by_children: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    """children a source serves -> its upload use"""

    def attach(self, sim: SwarmSimulation) -> None:
        sim.every(self.every, self._sample)

    def _sample(self, sim: SwarmSimulation) -> None:
        nodes = list(sim.nodes.values())
        active = [n for n in nodes if n.joined and n.done_at is None and not n.failed]
        if not active:
            return
        down = sum(f.rate for n in active for f in n.link.down_flows) / sum(n.link.down for n in active)
        up = sum(f.rate for n in nodes for f in n.link.up_flows) / sum(n.link.up for n in nodes)
        slots = sum(n.uploads.active for n in nodes) / len(nodes)
        line = sum(len(n.uploads.queue) for n in nodes) / len(nodes)
        self.samples.append((sim.now, len(active), down, up, slots, line))
        self.steady = self.steady or down >= self.steady_at
        if len(active) < len(nodes) or not self.steady:
            return  # crowding is read after the ramp, while every node still downloads
        children: Counter[str] = Counter()
        parents: dict[str, list[str]] = defaultdict(list)
        for layer in sim.layers:
            for peer, _, _, its_parents in sim.scheduler.member_views(layer.id):
                peers = [p for p in its_parents if p in sim.nodes]
                children.update(peers)
                parents[peer].extend(peers)
        for node in nodes:
            used = sum(f.rate for f in node.link.down_flows) / node.link.down
            mine = parents.get(node.id)
            if mine:
                crowding = round(2 * sum(children[p] for p in mine) / len(mine)) / 2
                self.by_crowding[crowding].append(used)
            self.by_children[children[node.id]].append(sum(f.rate for f in node.link.up_flows) / node.link.up)

    def render(self) -> str:
        lines = [
            "link use over time (download: nodes not done; upload, and a node's upload slots "
            "taken and requests in line for one: every node)"
        ]
        lines.append(
            f"  {'seconds':>8} {'not done':>9} {'download':>9} {'upload':>7} {'slots':>6} {'line':>5}"
        )
        for when, active, down, up, slots, line in self.samples:
            lines.append(f"  {when:8.2f} {active:9d} {down:9.0%} {up:7.0%} {slots:6.1f} {line:5.1f}")
        lines.append(
            f"after the ramp (download use {self.steady_at:.0%}), while every node downloads: "
            "a node's download use, by the children its parents serve (mean)"
        )
        lines.extend(_table(self.by_crowding))
        lines.append("and a source's upload use, by the children it serves")
        lines.extend(_table(self.by_children))
        return "\n".join(lines)


def _table(groups: dict[float, list[float]] | dict[int, list[float]]) -> list[str]:
    rows = [f"  {'children':>8} {'use':>5}  samples"]
    for key, values in sorted(groups.items()):
        rows.append(f"  {key:8g} {sum(values) / len(values):5.0%}  {len(values)}")
    return rows
