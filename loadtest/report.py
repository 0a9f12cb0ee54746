"""The surge report: completion percentiles, registry egress and the theoretical bound.

The bound is Kumar and Ross (2006): a file of size S to N nodes, origin upload u_s,
node upload u, node download d, can finish no sooner than

    T_min = max(S / u_s, S / d, N * S / (u_s + N * u)).

Every completion percentile is reported as a ratio to it, and when both modes ran, p2p
against direct. One unit system: sizes in binary units (KiB, MiB); a rate that was set in
decimal units (``100kB/s``) is shown as set and in binary. The JSON holds numbers only,
each key naming its unit (``_bytes``, ``_seconds``, ``_x_image``, ``_per_second``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from swarmpull.core.units import format_size

SOURCES = ("peer", "seed", "bittorrent", "upstream")
PERCENTILES = ("p50", "p90", "p99", "max")


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
    """More figures for the table, by label (a label ending in `` s`` is in seconds)."""
    egress_timeline: list[tuple[float, int]] = field(default_factory=list, repr=False)
    """(seconds since the start, registry blob bytes sent so far), on one clock."""
    sources: dict[str, float] = field(default_factory=dict)
    """Bytes the nodes received, by kind of source (peer, seed, upstream)."""
    registry_requests: dict[str, int] = field(default_factory=dict)
    """Requests the registry answered, by kind ("GET manifests", "HEAD blobs"...)."""
    faults: Any = None
    """A fault run's figures (``loadtest.fault_report.FaultResult``), and its fault-free twin's."""

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

    def per_node(self, source: str) -> float:
        """Bytes received from ``source`` per completed node, as a multiple of the image
        (none when no node completed: the bytes of 100 failed nodes were once shown as one
        node's 47 images)."""
        if not self.image_size or not self.completed:
            return math.nan
        return self.sources.get(source, 0.0) / self.completed / self.image_size

    def to_json(self) -> dict[str, Any]:
        times = self.times()
        return {
            "mode": self.mode,
            "nodes": self.nodes,
            "completed": self.completed,
            "failed": self.failed,
            "image_bytes": self.image_size,
            "registry_blob_egress_bytes": self.registry_egress,
            "registry_egress_x_image": _num(self.egress_ratio),
            "bound_seconds": _num(self.bound) if self.bound else None,
            "wall_seconds": _num(self.wall_time),
            "completion_seconds": {k: _num(v) for k, v in times.items()},
            "completion_x_bound": {k: _num(v / self.bound) for k, v in times.items()} if self.bound else None,
            "completion_times_seconds": [_num(t) for t in self.completion_times],
            "bytes_by_source": {k: _num(v) for k, v in self.sources.items()},
            "bytes_by_source_x_image_per_node": {k: _num(self.per_node(k)) for k in self.sources},
            "registry_requests": dict(self.registry_requests),
            "registry_egress_timeline": [{"seconds": _num(t), "bytes": b} for t, b in self.egress_timeline],
            "extra": {json_key(k): _num(v) if isinstance(v, float) else v for k, v in self.extra.items()},
        }


def compare(results: list[ModeResult]) -> dict[str, Any] | None:
    """p2p against direct, when both ran: how many times longer direct took (at each
    percentile, and wall time), and the share of direct's registry egress p2p needed."""
    p2p = next((r for r in results if r.mode.startswith("p2p")), None)
    direct = next((r for r in results if r.mode.startswith("direct")), None)
    if p2p is None or direct is None:
        return None
    ours, theirs = p2p.times(), direct.times()
    return {
        "direct_time_over_p2p": {k: _num(theirs[k] / ours[k]) if ours[k] else None for k in PERCENTILES},
        "p2p_egress_over_direct": _num(p2p.registry_egress / direct.registry_egress)
        if direct.registry_egress
        else None,
    }


def describe(settings: dict[str, Any]) -> dict[str, str]:
    """The settings for people: sizes in binary units, rates as set and in binary."""
    out: dict[str, str] = {}
    size = settings.get("image_bytes")
    for key, value in settings.items():
        if key == "image_bytes":
            layers = settings.get("layers")
            out["image"] = format_size(value) + (f" in {layers} layer{'s' * (layers != 1)}" if layers else "")
        elif key == "layers":
            continue
        elif key == "piece_bytes" and not value:
            out["pieces"] = "the supernode's rule"
        elif key == "piece_bytes":
            out["pieces"] = format_size(value) + (f" ({math.ceil(size / value)} per image)" if size else "")
        elif key.endswith("_bytes_per_second"):
            out[key.removesuffix("_bytes_per_second").replace("_", " ")] = rate_text(value)
        else:
            out[key.replace("_", " ")] = str(value)
    return out


def rate_text(rate: float | None) -> str:
    """A rate as set, in decimal units, and in binary: ``100 kB/s (97.7 KiB/s)``."""
    if rate is None:
        return "unlimited"
    for unit, scale in (("GB/s", 1e9), ("MB/s", 1e6), ("kB/s", 1e3)):
        if rate >= scale:
            return f"{rate / scale:g} {unit} ({format_size(rate)}/s)"
    return f"{rate:g} B/s"


def render(results: list[ModeResult], settings: dict[str, Any]) -> str:
    """The terminal table."""
    lines = ["", "swarmpull surge report", ""]
    lines += [f"  {key:<18} {value}" for key, value in describe(settings).items()]
    lines.append("")
    lines.append(f"  {'':<26}" + "".join(f"{r.mode:>22}" for r in results))

    def row(label: str, cells: list[str]) -> None:
        lines.append(f"  {label:<26}" + "".join(f"{c:>22}" for c in cells))

    row("nodes completed", [f"{r.completed}/{r.nodes}" for r in results])
    row("nodes failed", [str(r.failed) for r in results])
    row("registry blob egress", [format_size(r.registry_egress) for r in results])
    row("  x image size", [f"{r.egress_ratio:.2f}x" for r in results])
    row("bound T_min", [f"{r.bound:.2f}s" if r.bound else "-" for r in results])
    for key in PERCENTILES:
        row(f"completion {key}", [_time(r.times()[key], r.bound) for r in results])
    row("wall time", [f"{r.wall_time:.1f}s" for r in results])
    for source in SOURCES:
        if any(source in r.sources for r in results):
            row(
                f"from {source}, x image/node",
                [f"{r.per_node(source):.2f}x" if source in r.sources else "-" for r in results],
            )
    for kind in sorted({k for r in results for k in r.registry_requests}):
        row(f"registry {kind}", [str(r.registry_requests.get(kind, 0)) for r in results])
    for key in sorted({k for r in results for k in r.extra}):
        row(key, [_cell(r.extra.get(key)) for r in results])
    versus = compare(results)
    if versus is not None:
        times = versus["direct_time_over_p2p"]
        egress = versus["p2p_egress_over_direct"]
        speed = ", ".join(f"{k} {times[k]:.2f}x" for k in ("p50", "p99", "max") if times[k] is not None)
        # Either may be faster (a registry as fast as every link together serves direct at the
        # bound): the ratio says which, the words do not guess.
        lines += ["", f"  p2p vs direct: direct's completion times over p2p's: {speed}"]
        if egress is not None:
            lines.append(f"  {'':15}registry egress {egress:.3f}x direct's ({1 / egress:.0f} times less)")
    lines.append("")
    return "\n".join(lines)


def dump_json(results: list[ModeResult], settings: dict[str, Any]) -> str:
    body = {
        "settings": settings,
        "results": [r.to_json() for r in results],
        "p2p_vs_direct": compare(results),
    }
    return json.dumps(body, indent=2)


def json_key(label: str) -> str:
    """A table label as a JSON key with its unit: ``supernode CPU s`` is
    ``supernode_cpu_seconds``, ``supernode busy / bound`` ``supernode_busy_x_bound``."""
    key = label.lower().replace(" / ", " x ")
    key = re.sub(r" s$", " seconds", key)
    return re.sub(r"[^a-z0-9]+", "_", key).strip("_")


def _num(value: float) -> float | None:
    """JSON has no nan or infinity: null instead."""
    return round(value, 6) if math.isfinite(value) else None


def _time(seconds: float, bound: float) -> str:
    return f"{seconds:.2f}s ({seconds / bound:.2f}x)" if bound else f"{seconds:.2f}s"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)
