"""The fault table of a surge report: what a fault run did to the nodes that mattered,
beside the same surge without faults, and the goals it met.

Counted for the nodes a fault must not hurt: survivors (never killed, or started again)
that are honest (not byzantine). Corrupt bytes are what runtimes received that differ
from the image the registry serves (each runtime audits every byte, and its digest check
refuses a wrong blob): the figure that must be 0 whatever broke.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from loadtest.faults import FaultConfig
from loadtest.report import ModeResult, percentile

EXCLUDED = ("quarantined", "degraded")  # what the supernode does to an offender


@dataclass(slots=True)
class FaultResult:
    description: str
    survivors: int
    """Nodes up at the end that are not byzantine: those that must complete."""
    completed: int
    """Of those, the ones whose runtime pulled the whole image, verified."""
    p50: float
    """Their completion median (seconds since the start; nan if none completed)."""
    p99: float
    wrong_bytes: int = 0
    """Bytes any runtime received that differ from the image (must be 0)."""
    refused_blobs: int = 0
    """Blobs a runtime received whole and refused: their digest did not match."""
    failed_pulls: int = 0
    """Pulls that failed and were tried again, as kubelet does."""
    egress_ratio: float = math.nan
    byzantine: list[str] = field(default_factory=list)
    lied: list[str] = field(default_factory=list)
    """Byzantine nodes that twisted at least one piece (the others went unasked)."""
    excluded: dict[str, list[str]] = field(default_factory=dict)
    """Byzantine peers the supernode quarantined or degraded (and what it did)."""
    honest_flagged: dict[str, list[str]] = field(default_factory=dict)
    """Honest peers the supernode quarantined or degraded: slow under load is degraded
    too (the fault-free run shows how many that is without faults)."""
    reported: dict[str, int] = field(default_factory=dict)
    """Failure reports peers sent the supernode, by reason."""
    lies: dict[str, int] = field(default_factory=dict)
    """Answers the byzantine fronts twisted, by kind (proof they were asked at all)."""
    registry_faults: dict[str, int] = field(default_factory=dict)
    timeline: list[tuple[float, str]] = field(default_factory=list)
    goals: list[tuple[str, bool]] = field(default_factory=list)


def summarize(
    config: FaultConfig,
    result: ModeResult,
    outcomes: dict[int, tuple[float, str | None, dict[str, int]]],
    *,
    byzantine: frozenset[int],
    gone: set[int],
    decisions: dict[str, set[str]],
    reported: dict[str, int],
    lies: dict[str, int],
    liars: set[str],
    registry_faults: dict[str, int],
    timeline: list[tuple[float, str]],
) -> FaultResult:
    """The fault figures of one run; ``outcomes``: node -> (seconds, error, audit)."""
    must = set(range(result.nodes)) - gone - byzantine
    times = [outcomes[n][0] for n in must if n in outcomes and not outcomes[n][1]]
    seen = [audit for _, _, audit in outcomes.values()]
    byzantine_ids = {f"node{n}" for n in byzantine}
    flagged = {p: sorted(d & set(EXCLUDED)) for p, d in decisions.items() if d & set(EXCLUDED)}
    return FaultResult(
        description=config.describe(),
        survivors=len(must),
        completed=len(times),
        p50=percentile(times, 0.5),
        p99=percentile(times, 0.99),
        wrong_bytes=sum(a.get("wrong_bytes", 0) for a in seen),
        refused_blobs=sum(a.get("refused_blobs", 0) for a in seen),
        failed_pulls=sum(a.get("failed_pulls", 0) for a in seen),
        egress_ratio=result.egress_ratio,
        byzantine=sorted(byzantine_ids),
        lied=sorted(liars),
        excluded={p: s for p, s in flagged.items() if p in byzantine_ids},
        honest_flagged={p: s for p, s in flagged.items() if p not in byzantine_ids},
        reported=reported,
        lies=lies,
        registry_faults=registry_faults,
        timeline=timeline,
    )


def judge(config: FaultConfig, base: FaultResult | None, run: FaultResult) -> list[tuple[str, bool]]:
    """The goals of issue 11 that apply to this run, and whether each was met (the ones on
    time only beside a fault-free ``base``)."""
    goals = [
        ("every honest survivor completes", run.completed == run.survivors),
        ("0 corrupt bytes at runtimes", run.wrong_bytes == 0 and run.refused_blobs == 0),
    ]
    if config.kill_fraction or config.kill_supernode:
        goals.append(("registry egress <= 1.05x", run.egress_ratio <= 1.05))
    if config.flaky_upstream:
        goals.append(("registry egress <= 1.10x", run.egress_ratio <= 1.10))
    if config.byzantine_fraction:
        goals.append(("every byzantine node that lied excluded", set(run.lied) <= set(run.excluded)))
        if base is not None:
            goals.append(("p99 <= 1.5x fault-free", run.p99 <= 1.5 * base.p99))
    return goals


def render_faults(results: list[ModeResult]) -> str:
    """The fault table, for results whose ``faults`` are set (a fault-free run and its
    faulted twin); empty otherwise."""
    runs = [(r, r.faults) for r in results if isinstance(r.faults, FaultResult)]
    if not runs:
        return ""
    base = runs[0][1]
    lines = ["  faults", ""]
    for r, f in runs:
        lines.append(f"  {r.mode}: {f.description}")
        for at, note in f.timeline:
            lines.append(f"    {at:6.1f}s  {note}")
    lines.append("")

    def row(label: str, cells: list[str]) -> None:
        lines.append(f"  {label:<34}" + "".join(f" {c:>23}" for c in cells))

    row("", [r.mode for r, _ in runs])
    row("honest survivors completed", [f"{f.completed}/{f.survivors}" for _, f in runs])
    row("corrupt bytes at runtimes", [str(f.wrong_bytes) for _, f in runs])
    row("blobs refused by digest", [str(f.refused_blobs) for _, f in runs])
    row("failed pulls (retried)", [str(f.failed_pulls) for _, f in runs])
    row("registry blob egress", [f"{f.egress_ratio:.3f}x" for _, f in runs])
    row("p50 (honest survivors)", [_ratio(f.p50, base.p50) for _, f in runs])
    row("p99 (honest survivors)", [_ratio(f.p99, base.p99) for _, f in runs])
    if any(f.byzantine for _, f in runs):
        row("byzantine excluded", [_excluded(f) for _, f in runs])
        row("honest nodes excluded", [str(len(f.honest_flagged)) for _, f in runs])
        row("lies told", [_counts(f.lies) for _, f in runs])
    row("failures peers reported", [_counts(f.reported) for _, f in runs])
    if any(f.registry_faults for _, f in runs):
        row("registry failures injected", [_counts(f.registry_faults) for _, f in runs])
    goals = runs[-1][1].goals
    if goals:
        lines.append("")
        lines += [f"  goal: {name:<40} {'met' if ok else 'MISSED'}" for name, ok in goals]
    lines.append("")
    return "\n".join(lines)


def _ratio(p99: float, base: float) -> str:
    if math.isnan(p99):
        return "-"
    return f"{p99:.2f}s ({p99 / base:.2f}x)" if base and not math.isnan(base) else f"{p99:.2f}s"


def _excluded(f: FaultResult) -> str:
    if not f.byzantine:
        return "-"
    return f"{len(f.excluded)}/{len(f.byzantine)} ({len(f.lied)} lied)"


def _counts(counts: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v) or "-"
