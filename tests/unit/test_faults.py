"""The load test's fault plan, its goals and the runtime's audit: pure logic."""

from __future__ import annotations

import math

import pytest

from loadtest.client import Audit
from loadtest.fault_report import FaultResult, judge
from loadtest.faults import KILL_WINDOW, FaultConfig, FaultPlan


@pytest.mark.parametrize(
    "options, message",
    [
        ({"kill_fraction": 1.0}, "--kill-fraction"),
        ({"flaky_upstream": -0.1}, "--flaky-upstream"),
        ({"byzantine_mode": "polite"}, "--byzantine-mode"),
        ({"kill_fraction": 0.5, "byzantine_fraction": 0.5}, "honest survivors"),
        ({"kill_supernode": True, "replicas": 1}, "two replicas"),
    ],
)
def test_fault_options_are_checked(options, message):
    with pytest.raises(ValueError, match=message):
        FaultConfig(**options)


def test_a_supernode_or_redis_fault_runs_replicas_and_so_does_its_twin():
    assert FaultConfig(kill_fraction=0.1).supernode_replicas == 0
    config = FaultConfig(restart_redis=True)
    assert config.supernode_replicas == 2
    assert config.fault_free() == FaultConfig(replicas=2)
    assert "2 supernode replicas on Redis" in config.describe()


def test_the_plan_is_drawn_from_the_seed_and_killed_nodes_are_never_byzantine():
    config = FaultConfig(kill_fraction=0.2, byzantine_fraction=0.1, kill_supernode=True)
    plan = FaultPlan.draw(config, nodes=50, bound=10.0, seed=7)
    assert plan == FaultPlan.draw(config, nodes=50, bound=10.0, seed=7)
    assert plan.alone == list(range(40, 50))  # each killed node alone in its process
    assert len(plan.byzantine) == 5 and not plan.byzantine & set(plan.alone)
    assert sum(k.restart for k in plan.kills) == 5
    assert all(KILL_WINDOW[0] * 10 <= k.at <= KILL_WINDOW[1] * 10 for k in plan.kills)
    assert [k.at for k in plan.kills] == sorted(k.at for k in plan.kills)
    assert plan.supernode_kill_at is not None and plan.redis_restart_at is None


def figures(**overrides) -> FaultResult:
    settings = {
        "description": "",
        "survivors": 10,
        "completed": 10,
        "p50": 1.0,
        "p99": 2.0,
        "egress_ratio": 1.0,
    }
    return FaultResult(**(settings | overrides))


def test_goals_follow_the_faults():
    config = FaultConfig(byzantine_fraction=0.1)
    base = figures()
    run = figures(byzantine=["node1", "node2"], lied=["node1"], excluded={"node1": ["quarantined"]}, p99=2.9)
    assert dict(judge(config, base, run)) == {
        "every honest survivor completes": True,
        "0 corrupt bytes at runtimes": True,
        "every byzantine node that lied excluded": True,
        "p99 <= 1.5x fault-free": True,
    }
    slow = figures(byzantine=["node1"], lied=["node1"], p99=3.1, completed=9, wrong_bytes=1)
    assert not any(ok for _, ok in judge(config, base, slow))
    # without a twin, no goal on time
    assert "p99 <= 1.5x fault-free" not in dict(judge(config, None, run))
    flaky = dict(judge(FaultConfig(flaky_upstream=0.1), None, figures(egress_ratio=1.2)))
    assert flaky["registry egress <= 1.10x"] is False
    assert math.isnan(figures(p99=math.nan).p99)


def test_the_audit_counts_every_byte_that_differs_from_the_image():
    audit = Audit({"sha256:a": b"0123456789"})
    audit.check("sha256:a", 0, b"0123")
    audit.check("sha256:a", 4, b"45X7")  # a flipped byte: the whole chunk is counted
    audit.check("sha256:a", 8, b"89!")  # past the end
    audit.check("sha256:b", 0, b"??")  # a blob the image does not have
    assert audit.wrong_bytes == 4 + 3 + 2
    audit.refused(10)
    assert (audit.refused_blobs, audit.refused_bytes) == (1, 10)
