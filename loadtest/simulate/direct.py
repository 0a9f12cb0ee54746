"""The baseline beside a simulated surge: every node pulls the image from the registry."""

from __future__ import annotations

import math
import random

from loadtest.report import ModeResult, kumar_ross_bound
from loadtest.simulate.config import SimConfig
from loadtest.simulate.flows import Link, Network


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
