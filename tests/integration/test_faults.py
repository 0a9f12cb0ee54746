"""Faulted surges on real sockets (``swarmpull loadtest --kill-fraction ...``), small and
bounded: whatever breaks, every node that must finish pulls the whole image with the
right digests, no runtime is handed a wrong byte, and the registry is not stampeded.
No times are judged here (they go in docs/RELIABILITY.md, from ``swarmpull benchmarks
faults``)."""

from __future__ import annotations

import asyncio
import shutil
import sys

import pytest

from loadtest.fault_report import FaultResult, render_faults
from loadtest.faults import FaultConfig
from loadtest.harness import SurgeConfig, run_surge

KiB = 1024


def surge(nodes: int, faults: FaultConfig) -> SurgeConfig:
    return SurgeConfig(
        nodes=nodes,
        image_size=384 * KiB,
        layers=2,
        piece_size=32 * KiB,
        node_bandwidth=2e6,
        registry_bandwidth=2e6,
        workers=2,
        timeout=240.0,
        faults=faults,
    )


def assert_unharmed(figures: FaultResult, max_egress: float) -> None:
    assert figures.survivors > 0
    assert figures.completed == figures.survivors  # each pull checked every blob's digest
    assert figures.wrong_bytes == 0  # every byte each runtime received, held against the image
    assert figures.refused_blobs == 0
    assert figures.egress_ratio <= max_egress


async def test_killed_nodes_lying_nodes_and_a_flaky_registry_hand_no_runtime_a_wrong_byte():
    faults = FaultConfig(
        kill_fraction=0.2, byzantine_fraction=0.2, byzantine_mode="wrong", flaky_upstream=0.1
    )
    base, run = await run_surge(surge(10, faults))

    assert (base.mode, run.mode) == ("no faults", "faults")
    assert base.faults.completed == base.faults.survivors == 10
    figures = run.faults
    assert len(figures.byzantine) == 2
    notes = [note for _, note in figures.timeline]
    assert sum(note.endswith("killed (SIGKILL)") for note in notes) == 2, notes  # mid-pull
    assert sum(note.endswith("restarted on its data dir") for note in notes) == 1, notes
    assert figures.survivors == 7  # 8 honest nodes, one killed for good; the other came back
    # resets cut blobs mid-body, so some upstream bytes are wasted; a stampede is 10x
    assert_unharmed(figures, max_egress=2.0)
    table = render_faults([base, run])
    assert "corrupt bytes at runtimes" in table and "goal: 0 corrupt bytes at runtimes" in table


@pytest.mark.parametrize("mode", ["truncate", "slow", "liar", "refuse"])
async def test_every_honest_node_completes_beside_byzantine_piece_servers(mode):
    # One in four lies; the first pieces come from the seed, then peers, liars among them.
    faults = FaultConfig(byzantine_fraction=0.25, byzantine_mode=mode)
    (run,) = await run_surge(surge(8, faults), twin=False)

    figures = run.faults
    assert len(figures.byzantine) == 2
    assert sum(figures.lies.values()) > 0  # the fronts were asked, and lied
    assert bool(figures.lied) is (mode != "refuse")  # a refusal is no lie to exclude anyone for
    assert figures.survivors == 6
    assert_unharmed(figures, max_egress=1.0)  # the seed read each blob once


@pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server (scripts/test installs it)")
async def test_the_owner_replica_killed_and_redis_restarted_mid_surge():
    faults = FaultConfig(kill_supernode=True, restart_redis=True)
    (run,) = await run_surge(surge(8, faults), twin=False)

    figures = run.faults
    notes = [note for _, note in figures.timeline]
    assert any(note.startswith("supernode") and note.endswith("killed") for note in notes), notes
    assert "redis-server killed and started again" in notes
    assert figures.survivors == 8
    # The surviving replica takes the dead owner's tasks over and resumes their reads
    # after what was staged: the registry sends again what the dead owner received and
    # had not staged (at this size, up to the whole image: it sits in the dead process's
    # socket buffers). The Redis outage that follows may cost one more read of a layer (a
    # survivor that cannot renew the lease of a layer it reads lets it go; a node that
    # hears from no replica twice reads directly): one CI run saw 2.17x, 150 runs here at
    # most 1.83x. Never a copy per node: 8 nodes would be 9x (before, a node told "the
    # owner is moving" after an outage read from it itself).
    assert_unharmed(figures, max_egress=3.0)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--kill-fraction", "0.1", "--simulate"], "real p2p surges"),
        (["--flaky-upstream", "0.1", "--mode", "both"], "real p2p surges"),
        (["--byzantine-fraction", "0.1", "--transport", "bittorrent"], "the HTTP swarm only"),
        (["--kill-fraction", "0.1", "--transport", "both"], "the HTTP swarm only"),
        (["--kill-fraction", "1"], "--kill-fraction is a share"),
        (["--byzantine-fraction", "0.6", "--kill-fraction", "0.5"], "honest survivors"),
    ],
)
async def test_fault_options_that_cannot_run_are_one_line(args, message):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "swarmpull", "loadtest", "--nodes", "4", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 1 and not out
    assert message in err.decode() and len(err.decode().strip().splitlines()) == 1
