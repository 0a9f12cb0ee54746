"""The surge report as a picture: completion-time CDF, registry egress over time, and the
bytes nodes received by kind of source. Needs matplotlib (``swarmpull[loadtest]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loadtest.report import SOURCES, ModeResult, describe


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
            egress.step(
                [t for t, _ in result.egress_timeline],
                [b / result.image_size for _, b in result.egress_timeline],
                where="post",
                label=result.mode,
            )
    cdf.set(title="completion time (dashed: bound)", xlabel="seconds", ylabel="share of nodes done")
    finished = [t for r in results for t in r.completion_times if t > 0]
    if finished and max(finished) > 20 * min(finished):
        cdf.set_xscale("log")  # p2p and direct differ by orders of magnitude
    egress.set(title="registry blob egress", xlabel="seconds since the start", ylabel="x image size")
    if any(r.egress_ratio > 20 for r in results):
        egress.set_yscale("log")  # direct sends N images, p2p about one
    drawn = [r for r in results if r.sources]
    width = 0.8 / len(SOURCES)
    for offset, source in enumerate(SOURCES):
        values = [r.per_node(source) for r in drawn]
        sources.bar([i + offset * width for i in range(len(drawn))], values, width=width, label=source)
    sources.set_xticks([i + width for i in range(len(drawn))], [r.mode for r in drawn])
    sources.set(title="bytes received, by source", ylabel="x image size per node")
    for axis in (cdf, egress, sources):
        if axis.get_legend_handles_labels()[0]:
            axis.legend()
    fig.suptitle(", ".join(f"{k}: {v}" for k, v in describe(settings).items()), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
