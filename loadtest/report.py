"""The surge report: completion percentiles, registry egress and the theoretical bound.

The bound is Kumar and Ross (2006): a file of size S to N nodes, origin upload u_s,
node upload u, node download d, can finish no sooner than

    T_min = max(S / u_s, S / d, N * S / (u_s + N * u)).

Every completion percentile is reported as a ratio to it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from swarmpull.core.units import format_size


def kumar_ross_bound(size: float, nodes: int, origin_up: float, node_up: float, node_down: float) -> float:
    """T_min in seconds; rates in bytes per second (``math.inf`` for unlimited)."""
    if size <= 0 or nodes <= 0:
        return 0.0
    return max(size / origin_up, size / node_down, nodes * size / (origin_up + nodes * node_up))


def percentile(values: list[float], share: float) -> float:
    """The ``share`` (0..1) percentile by the nearest-rank method; nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


@dataclass(slots=True)
class ModeResult:
    """One run of a surge (p2p or direct)."""

    mode: str
    nodes: int
    completed: int
    failed: int
    image_size: int
    registry_egress: int
    completion_times: list[float] = field(repr=False)
    bound: float
    wall_time: float
    extra: dict[str, Any] = field(default_factory=dict)
    egress_timeline: list[tuple[float, int]] = field(default_factory=list, repr=False)
    """(seconds since the start, registry bytes sent so far)."""
    sources: dict[str, float] = field(default_factory=dict)
    """Bytes the nodes received, by kind of source (peer, seed, upstream)."""
    registry_requests: dict[str, int] = field(default_factory=dict)
    """Requests the registry answered, by kind (``"GET manifests"``, ``"HEAD blobs"``...)."""

    @property
    def egress_ratio(self) -> float:
        return self.registry_egress / self.image_size if self.image_size else math.nan

    def times(self) -> dict[str, float]:
        t = self.completion_times
        return {
            "p50": percentile(t, 0.50),
            "p90": percentile(t, 0.90),
            "p99": percentile(t, 0.99),
            "max": max(t) if t else math.nan,
        }

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["egress_ratio"] = self.egress_ratio
        data["percentiles"] = self.times()
        data["ratios_to_bound"] = {k: v / self.bound if self.bound else None for k, v in self.times().items()}
        return data


REQUEST_KINDS = (
    ("registry manifest GET", "GET manifests"),
    ("registry manifest HEAD", "HEAD manifests"),
    ("registry blob GET", "GET blobs"),
    ("registry blob HEAD", "HEAD blobs"),
)


def render(results: list[ModeResult], settings: dict[str, Any]) -> str:
    """The terminal table."""
    lines = ["", "swarmpull surge report", ""]
    lines += [f"  {key:<18} {value}" for key, value in settings.items()]
    lines.append("")
    header = f"  {'':<22}" + "".join(f"{r.mode:>22}" for r in results)
    lines.append(header)

    def row(label: str, cells: list[str]) -> None:
        lines.append(f"  {label:<22}" + "".join(f"{c:>22}" for c in cells))

    row("nodes completed", [f"{r.completed}/{r.nodes}" for r in results])
    row("nodes failed", [str(r.failed) for r in results])
    row("registry blob egress", [f"{format_size(r.registry_egress)}" for r in results])
    row("  x image size", [f"{r.egress_ratio:.2f}x" for r in results])
    for label, kind in REQUEST_KINDS:
        row(label, [str(r.registry_requests.get(kind, 0)) if r.registry_requests else "-" for r in results])
    row("bound T_min", [f"{r.bound:.2f}s" if r.bound else "- (unshaped)" for r in results])
    for key in ("p50", "p90", "p99", "max"):
        row(f"completion {key}", [_time(r.times()[key], r.bound) for r in results])
    row("wall time", [f"{r.wall_time:.1f}s" for r in results])
    extra_keys = sorted({k for r in results for k in r.extra})
    for key in extra_keys:
        row(key, [_cell(r.extra.get(key)) for r in results])
    lines.append("")
    return "\n".join(lines)


def _time(seconds: float, bound: float) -> str:
    return f"{seconds:.2f}s ({seconds / bound:.2f}x)" if bound else f"{seconds:.2f}s"


def _time(seconds: float, bound: float) -> str:
    return f"{seconds:.2f}s ({seconds / bound:.2f}x)" if bound else f"{seconds:.2f}s"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def dump_json(results: list[ModeResult], settings: dict[str, Any]) -> str:
    return json.dumps({"settings": settings, "results": [r.to_json() for r in results]}, indent=2)
