"""``swarmpull benchmarks faults``: what each fault costs a real-socket surge, beside the
same surge without it (its fault-free twin, run just before): honest survivors that
completed, wrong bytes handed to runtimes (must be 0), registry egress as a multiple of
the image, and p50 and p99 as ratios to the twin's. Each scenario runs ``RUNS`` times;
min / median / max. The figures in docs/RELIABILITY.md come from here."""

from __future__ import annotations

import statistics
import sys

from loadtest.fault_report import FaultResult
from loadtest.faults import FaultConfig
from loadtest.harness import SurgeConfig, run_surge

RUNS = 3
KiB = 1024
SCENARIOS: dict[str, FaultConfig] = {
    "10% killed": FaultConfig(kill_fraction=0.1),
    "10% byzantine, wrong": FaultConfig(byzantine_fraction=0.1, byzantine_mode="wrong"),
    "10% byzantine, truncate": FaultConfig(byzantine_fraction=0.1, byzantine_mode="truncate"),
    "10% byzantine, slow": FaultConfig(byzantine_fraction=0.1, byzantine_mode="slow"),
    "10% byzantine, liar": FaultConfig(byzantine_fraction=0.1, byzantine_mode="liar"),
    "flaky upstream 10%": FaultConfig(flaky_upstream=0.1),
    "owner replica killed, Redis restarted": FaultConfig(kill_supernode=True, restart_redis=True),
}


def surge(nodes: int, faults: FaultConfig) -> SurgeConfig:
    return SurgeConfig(
        nodes=nodes,
        image_size=1024 * KiB,
        layers=4,
        piece_size=64 * KiB,
        node_bandwidth=1e6,
        registry_bandwidth=2e6,
        timeout=300.0,
        faults=faults,
    )


async def run_faults(nodes: int) -> str:
    lines = [
        f"faults: {nodes} nodes, 1 MiB image in 4 layers, 64 KiB pieces, node links 1 MB/s, "
        f"registry 2 MB/s; {RUNS} runs each, min/median/max; p50 and p99 as ratios to the "
        "fault-free twin run just before; completed: honest survivors, the worst run; liars "
        "excluded: byzantine nodes that twisted a piece and were quarantined or degraded, all runs",
        f"  {'scenario':<38}{'completed':>10}{'wrong B':>9}"
        f"{'egress x':>18}{'p50 / twin':>18}{'p99 / twin':>18}{'liars excluded':>16}",
    ]
    for name, faults in SCENARIOS.items():
        rows: list[tuple[FaultResult, FaultResult]] = []
        for _ in range(RUNS):
            base, run = await run_surge(surge(nodes, faults))
            rows.append((base.faults, run.faults))
        worst = min((f for _, f in rows), key=lambda f: f.completed - f.survivors)
        wrong = max(f.wrong_bytes for _, f in rows)
        # byzantine nodes that twisted a piece and were excluded, over all runs
        liars = sum(len(f.lied) for _, f in rows)
        caught = sum(len(set(f.lied) & set(f.excluded)) for _, f in rows)
        lines.append(
            f"  {name:<38}{f'{worst.completed}/{worst.survivors}':>10}{wrong:>9}"
            f"{_spread([f.egress_ratio for _, f in rows]):>18}"
            f"{_spread([f.p50 / b.p50 for b, f in rows]):>18}"
            f"{_spread([f.p99 / b.p99 for b, f in rows]):>18}"
            f"{f'{caught}/{liars}' if faults.byzantine_fraction else '-':>16}"
        )
        print(lines[-1], file=sys.stderr, flush=True)  # progress: a scenario takes minutes
    return "\n".join(lines)


def _spread(values: list[float]) -> str:
    return f"{min(values):.2f}/{statistics.median(values):.2f}/{max(values):.2f}"
