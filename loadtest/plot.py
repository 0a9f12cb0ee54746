"""The surge report as a picture: completion-time CDF, registry egress over time, and the
bytes nodes received by kind of source. Needs matplotlib (``swarmpull[loadtest]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loadtest.report import ModeResult


def plot(results: list[ModeResult], path: Path, settings: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (cdf, egress, sources) = plt.subplots(1, 3, figsize=(15, 4.5))
    for result in results:
        times = sorted(result.completion_times)
        if times:
            shares = [(i + 1) / result.nodes for i in range(len(times))]
            cdf.step(times, shares, where="post", label=result.mode)
        if result.bound:
            cdf.axvline(result.bound, linestyle="--", color="grey", linewidth=1)
        if result.egress_timeline:
            egress.plot(
                [t for t, _ in result.egress_timeline],
                [b / result.image_size for _, b in result.egress_timeline],
                label=result.mode,
            )
    cdf.set(title="completion time (dashed: bound)", xlabel="seconds", ylabel="share of nodes done")
    finished = [t for r in results for t in r.completion_times if t > 0]
    if finished and max(finished) > 20 * min(finished):
        cdf.set_xscale("log")  # p2p and direct differ by orders of magnitude
    egress.set(title="registry egress", xlabel="seconds", ylabel="x image size")
    labels = [r.mode for r in results if r.sources]
    for offset, source in enumerate(("peer", "seed", "upstream")):
        values = [
            r.sources.get(source, 0.0) / max(1, r.completed) / r.image_size for r in results if r.sources
        ]
        sources.bar([i + offset * 0.25 for i in range(len(labels))], values, width=0.25, label=source)
    sources.set_xticks([i + 0.25 for i in range(len(labels))], labels)
    sources.set(title="bytes received, by source", ylabel="x image size per node")
    for axis in (cdf, egress, sources):
        if axis.get_legend_handles_labels()[0]:
            axis.legend()
    fig.suptitle(", ".join(f"{k}: {v}" for k, v in settings.items()), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
