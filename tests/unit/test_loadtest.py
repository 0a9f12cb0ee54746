"""The load test's arithmetic, and the simulator on scenarios small enough to solve by hand."""

from __future__ import annotations

import gc
import json
import math

import pytest

from loadtest.report import ModeResult, compare, dump_json, json_key, kumar_ross_bound, percentile, render
from loadtest.simulate.config import DEFAULT_SERVICE, SimConfig
from loadtest.simulate.direct import simulate_direct
from loadtest.simulate.flows import Link, Network
from loadtest.simulate.swarm import SwarmSimulation
from loadtest.simulate.trace import LinkTrace
from peer.policy import PiecePolicy
from swarmpull.core.failures import FailureReason

MB = 1e6
FREE = dict.fromkeys(DEFAULT_SERVICE, 0.0)  # a supernode that costs nothing


def test_kumar_ross_bound_picks_the_binding_term():
    size = 100 * MB
    # the origin binds: it must send the file once
    assert kumar_ross_bound(size, 10, origin_up=1 * MB, node_up=100 * MB, node_down=100 * MB) == 100
    # a node's download binds
    assert kumar_ross_bound(size, 10, origin_up=1000 * MB, node_up=1000 * MB, node_down=10 * MB) == 10
    # the swarm's total upload binds: 1000 copies over (origin + 1000 nodes) of upload
    assert kumar_ross_bound(
        size, 1000, origin_up=10 * MB, node_up=1 * MB, node_down=1000 * MB
    ) == pytest.approx(1000 * size / (10 * MB + 1000 * MB))
    assert kumar_ross_bound(size, 10, math.inf, math.inf, math.inf) == 0.0


def test_percentiles_by_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.50) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile([7.0], 0.99) == 7
    assert math.isnan(percentile([], 0.5))


def test_report_ratios_and_json():
    result = ModeResult("p2p", 4, 3, 1, 1000, 1000, [1.0, 2.0, 4.0], bound=2.0, wall_time=4.0)
    assert result.egress_ratio == 1.0
    assert result.times() == {"p50": 2.0, "p90": 4.0, "p99": 4.0, "max": 4.0}
    table = render([result], {"nodes": 4})
    assert "3/4" in table and "2.00s (1.00x)" in table and "4.00s (2.00x)" in table
    data = json.loads(dump_json([result], {}))["results"][0]
    assert data["completion_x_bound"] == {"p50": 1.0, "p90": 2.0, "p99": 2.0, "max": 2.0}


def both_modes() -> list[ModeResult]:
    size = 1 << 20
    p2p = ModeResult(
        "p2p", 10, 10, 0, size, size, [2.0] * 10, bound=1.0, wall_time=2.0,
        extra={"supernode CPU s": 0.5, "registry manifest bytes": 900, "first error": None},
        egress_timeline=[(0.0, 0), (1.5, size)],
        sources={"peer": 8.0 * size, "seed": 2.0 * size, "upstream": 0.0},
    )  # fmt: skip
    direct = ModeResult(
        "direct", 10, 10, 0, size, 10 * size, [10.0] * 10, bound=10.0, wall_time=10.0,
        egress_timeline=[(0.0, 0), (10.0, 10 * size)], sources={"upstream": 10.0 * size},
    )  # fmt: skip
    return [p2p, direct]


def test_p2p_is_compared_with_direct_when_both_ran():
    results = both_modes()
    assert compare(results) == {
        "direct_time_over_p2p": {"p50": 5.0, "p90": 5.0, "p99": 5.0, "max": 5.0},
        "p2p_egress_over_direct": 0.1,
    }
    assert compare(results[:1]) is None
    settings = {"nodes": 10, "image_bytes": 1 << 20, "layers": 2, "node_link_bytes_per_second": 100_000}
    table = render(results, settings)
    assert "direct's completion times over p2p's: p50 5.00x, p99 5.00x, max 5.00x" in table
    assert "0.100x direct's (10 times less)" in table
    assert "1.0 MiB in 2 layers" in table  # sizes in binary units
    assert "100 kB/s (97.7 KiB/s)" in table  # a rate as set, and in binary
    assert "from upstream, x image/node" in table  # direct's sources too


def test_bytes_per_completed_node_are_none_when_no_node_completed():
    failed = both_modes()[0]
    failed.completed, failed.failed, failed.completion_times = 0, 10, []
    per_node = failed.to_json()["bytes_by_source_x_image_per_node"]
    assert per_node == {"peer": None, "seed": None, "upstream": None}


def test_the_json_report_holds_numbers_with_units_in_their_names():
    body = json.loads(dump_json(both_modes(), {"nodes": 10, "image_bytes": 1 << 20}))

    def strings(value, path=""):
        if isinstance(value, str):
            yield path
        elif isinstance(value, dict):
            for key, item in value.items():
                yield from strings(item, f"{path}.{key}")
        elif isinstance(value, list):
            for item in value:
                yield from strings(item, f"{path}[]")

    assert set(strings(body)) == {".results[].mode"}  # every figure is a number
    p2p = body["results"][0]
    assert p2p["bytes_by_source_x_image_per_node"] == {"peer": 0.8, "seed": 0.2, "upstream": 0.0}
    assert p2p["extra"] == {"supernode_cpu_seconds": 0.5, "registry_manifest_bytes": 900, "first_error": None}
    assert p2p["registry_egress_timeline"][-1] == {"seconds": 1.5, "bytes": 1 << 20}
    assert body["p2p_vs_direct"]["p2p_egress_over_direct"] == 0.1
    assert json_key("supernode busy / bound") == "supernode_busy_x_bound"


def tiny(**overrides) -> SimConfig:
    """One 1 MB piece, no latency, a supernode that answers at once: a seed and nodes
    whose times can be worked out."""
    settings = {
        "nodes": 1,
        "image_size": 1_000_000,
        "piece_size": 1_000_000,
        "node_up": 10 * MB,
        "node_down": 10 * MB,
        "registry_rate": 2 * MB,
        "rtt": 0.0,
        "service": dict(FREE),
    }
    return SimConfig(**(settings | overrides))


def test_the_network_ends_one_flow_per_step_and_reprices_the_rest():
    """Two flows share a 2 MB/s upload (1 MB/s each); when the short one ends, the long one
    gets the whole link. ``step`` ends one flow at a time, never one due after ``until``,
    and a cancelled flow never ends."""
    ended = []
    network = Network(lambda flow, now: ended.append((flow.payload, now)))
    src, a, b, c = Link(2 * MB, math.inf), Link(math.inf, 10 * MB), Link(math.inf, 10 * MB), Link(1, 1)
    network.start(src, a, 1 * MB, "short")
    network.start(src, b, 3 * MB, "long")
    gone = network.start(Link(math.inf, math.inf), c, 1, "cancelled")
    network.cancel(gone)
    assert not network.step(0.99)
    assert network.step(2.0) and ended == [("short", pytest.approx(1.0))]
    assert not network.step(1.99)  # 2 MB left at 2 MB/s: ends at 2.0
    network.advance(5.0)
    assert ended == [("short", pytest.approx(1.0)), ("long", pytest.approx(2.0))]
    assert network.now == 5.0 and network.next_time() == math.inf


def test_a_run_makes_no_reference_cycles_and_leaves_the_collector_as_it_was():
    """The cyclic collector is off during a run (``SwarmSimulation.run``); that only holds
    memory steady if the run leaves no cycles behind, faults and slow nodes included."""
    config = tiny(
        nodes=30, image_size=8_000_000, layers=2, fail_fraction=0.2, fail_window=1.0, slow_fraction=0.3
    )
    sim = SwarmSimulation(config)
    gc.collect()
    result = sim.run()
    assert result.completed + result.failed == 30 and result.failed > 0
    assert gc.isenabled()
    assert gc.collect() == 0  # nothing the run made was left for the collector
    gc.disable()
    try:
        SwarmSimulation(tiny()).run()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_one_node_gets_the_piece_after_the_seed_has_it():
    # the registry streams the piece to the seed in 0.5 s, the seed sends it at 2 MB/s
    result = SwarmSimulation(tiny()).run()
    assert result.completion_times == [pytest.approx(0.5 + 0.5)]
    assert result.registry_egress == 1_000_000


def test_two_nodes_share_the_seed_then_nothing_is_left_to_share():
    # both fetch the one piece from the seed at once, 1 MB/s each
    result = SwarmSimulation(tiny(nodes=2)).run()
    assert result.completion_times == [pytest.approx(1.5), pytest.approx(1.5)]
    assert result.sources == {"peer": 0.0, "seed": 2_000_000}


def test_a_peer_passes_on_what_it_got_from_the_seed():
    # four pieces; the seed serves one upload at a time
    config = tiny(nodes=3, image_size=4_000_000, seed_slots=1)
    sim = SwarmSimulation(config)
    result = sim.run()
    assert result.completed == 3
    assert sim.sources["peer"] > 0  # pieces crossed between the nodes
    assert result.sources["seed"] + result.sources["peer"] == 12_000_000


def test_a_transfer_is_timed_from_its_request_as_the_daemon_times_it(monkeypatch):
    """The seed serves one upload at a time: the second node's piece waits 0.5 s in line,
    and its policy learns the 1 MB took 1.0 s (1 MB/s), not the 0.5 s it was on the wire."""
    timed = []
    finished = PiecePolicy.finished

    def spy(self, piece, parent_id, size, seconds, now):  # type: ignore[no-untyped-def]
        timed.append(seconds)
        return finished(self, piece, parent_id, size, seconds, now)

    monkeypatch.setattr(PiecePolicy, "finished", spy)
    result = SwarmSimulation(tiny(nodes=2, seed_slots=1)).run()
    assert sorted(result.completion_times) == [pytest.approx(1.0), pytest.approx(1.5)]
    assert sorted(timed) == [pytest.approx(0.5), pytest.approx(1.0)]


def test_a_node_runs_no_more_transfers_than_its_download_slots_all_layers_together():
    """As the daemon's download slots: 4 layers, 2 slots; the seed is slow, so each layer's
    policy alone would run more than 2 transfers to fill the link."""
    most = []
    sim = SwarmSimulation(tiny(nodes=3, layers=4, image_size=8_000_000, download_slots=2))
    sim.every(
        0.05,
        lambda s: most.append(
            max(sum(d.policy.transfers for d in n.downloads.values()) for n in s.nodes.values())
        ),
    )
    assert sim.run().completed == 3
    assert max(most) == 2


def test_a_source_with_its_slots_and_its_line_full_refuses_and_is_asked_again(monkeypatch):
    """The seed (fast enough to take three children) has one slot and a line of one: the
    third node is refused (busy), as the daemon's piece server refuses it, and completes."""
    reasons = []
    failed = PiecePolicy.failed

    def spy(self, piece, parent_id, reason, now):  # type: ignore[no-untyped-def]
        reasons.append(reason)
        return failed(self, piece, parent_id, reason, now)

    monkeypatch.setattr(PiecePolicy, "failed", spy)
    result = SwarmSimulation(tiny(nodes=3, seed_slots=1, seed_up=10 * MB)).run()
    assert result.completed == 3
    assert reasons == [FailureReason.BUSY]


def test_direct_mode_shares_the_registry_among_every_node():
    result = simulate_direct(tiny(nodes=4, registry_rate=1 * MB))
    assert result.completion_times == [pytest.approx(4.0)] * 4  # 4 MB through 1 MB/s
    assert result.registry_egress == 4_000_000


def test_a_failed_node_does_not_stop_the_rest():
    config = tiny(nodes=20, image_size=8_000_000, fail_fraction=0.1, fail_window=1.0)
    result = SwarmSimulation(config).run()
    assert result.completed == 18 and result.failed == 2


def test_the_supernode_is_charged_for_every_call():
    """Each call waits its turn at the one supernode: 50 opens at 0.2 s each keep the last
    node from starting before 10 s."""
    costly = SwarmSimulation(tiny(nodes=50, service=FREE | {"open": 0.2})).run()
    assert costly.extra["supernode busy s"] >= 50 * 0.2
    assert max(costly.completion_times) >= 10.0
    free = SwarmSimulation(tiny(nodes=50)).run()
    assert max(free.completion_times) < 5.0


def test_a_node_opens_its_layers_in_one_call_and_reports_on_them_together():
    """Calls are charged per call plus per task beyond the first, as the control channel
    batches them: 5 nodes x 4 layers cost 5 opens, not 20."""
    service = FREE | {"open": 0.01, "open_task": 0.002, "report_task": 0.001}
    sim = SwarmSimulation(tiny(nodes=5, layers=4, image_size=4_000_000, service=service))
    result = sim.run()
    assert result.completed == 5
    assert sim.calls["open"] == 5
    extra_in_reports = sim.tasks_carried - 20 - sim.calls["report"]
    assert sim.supernode_busy == pytest.approx(5 * (0.01 + 3 * 0.002) + extra_in_reports * 0.001)
    assert sim.tasks_carried > sim.calls["open"] + sim.calls["report"]  # reports carried layers together


def test_the_layers_spread_over_the_owners_the_same_way_in_every_run():
    """2 layers, 2 supernode replicas: each owns one, so a node opens its layers in two
    calls, one per owner (it was a string hash, which differs from process to process)."""
    sim = SwarmSimulation(tiny(nodes=5, layers=2, image_size=2_000_000, owners=2))
    assert sim.run().completed == 5
    assert sim.calls["open"] == 10


@pytest.mark.parametrize("network", ["exact", "fast"])
def test_a_seed_gives_the_same_run_every_time(network):
    """What lets a change meant only to make the simulator faster be checked: the figures
    of one seed do not move (a set ordered by memory address once made them)."""

    def run(seed: int) -> tuple:  # type: ignore[type-arg]
        config = tiny(
            nodes=40, image_size=6_000_000, layers=2, slow_fraction=0.3, fail_fraction=0.1,
            fail_window=1.0, join_window=0.5, network=network, seed=seed,
        )  # fmt: skip
        sim = SwarmSimulation(config)
        result = sim.run()
        return result.completion_times, dict(sim.calls), sim.tasks_carried, dict(sim.sources)

    first = run(7)
    assert run(7) == first
    assert run(8) != first


def test_the_trace_reads_the_links_without_changing_the_run():
    """One node, one 1 MB piece: the seed has it at 0.5 s and sends it at 2 MB/s, a fifth
    of the node's link, until 1.0 s."""
    trace = LinkTrace(0.25)
    sim = SwarmSimulation(tiny())
    trace.attach(sim)
    result = sim.run()
    assert result.completion_times == SwarmSimulation(tiny()).run().completion_times
    assert [sample[:2] for sample in trace.samples] == [(0.25, 1), (0.5, 1), (0.75, 1)]
    assert trace.samples[0][2:] == (0.0, 0.0, 0.0, 0.0)
    # the seed is no node: no upload, no slot taken
    assert trace.samples[2][2:] == (pytest.approx(0.2), 0.0, 0.0, 0.0)


def test_the_trace_groups_nodes_by_their_parents_children():
    trace = LinkTrace(0.5, steady_at=0.0)  # a swarm this small hardly fills its links
    sim = SwarmSimulation(tiny(nodes=30, image_size=16_000_000, seed_slots=2, upload_slots=1))
    trace.attach(sim)
    sim.run()
    assert max(sample[4] for sample in trace.samples) <= 1.0  # one upload slot each
    assert max(sample[5] for sample in trace.samples) > 0.0  # and requests waited for it
    assert trace.by_crowding and trace.by_children
    assert set(trace.by_children[0]) <= {0.0}  # a source without children uploads nothing
    assert any(use > 0 for key, uses in trace.by_children.items() if key for use in uses)
    assert "a node's download use" in trace.render()
