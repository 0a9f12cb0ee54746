"""``swarmpull benchmarks background``: what a preheat takes from business traffic.

Two network namespaces joined by a veth pair whose both ends are shaped by ``tc tbf``
(default 100 Mbit/s each way, a queue of at most 50 ms). No propagation delay is added:
this machine's kernel has no ``netem``, so the round trip is the veth's (microseconds)
plus whatever the queue holds. A long TCP flow from one side to the other stands for the business
traffic; a preheat (a libtorrent seed on the first side, a leech on the second, the
production session and settings) crosses the same link, over uTP (LEDBAT) or over TCP.
Each run measures, for each transport in turn:

- the preheat alone (seconds);
- the business flow alone for a few seconds (its baseline), then with the preheat
  started beside it: the share of its baseline it keeps while the preheat runs, and how
  long the preheat takes (the business flow ends after a fixed time; a preheat that
  yielded finishes then).

Needs root (namespaces, veth, tc); skipped with a message otherwise. Everything it
creates is named with this process's id and removed at the end, also on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from swarmpull.edges.torrent import make_torrent

SIDE_A, SIDE_B = "10.213.0.1", "10.213.0.2"  # inside our own namespaces only
SINK_PORT = 5201


@dataclass(frozen=True, slots=True)
class Link:
    rate_mbit: int = 100
    queue_ms: int = 50  # most queueing delay the shaper's buffer holds

    def __str__(self) -> str:
        return f"tc tbf {self.rate_mbit} Mbit/s each way, a {self.queue_ms} ms queue"


class Namespaces:
    """Two namespaces and a shaped veth pair between them; ``close()`` removes them."""

    def __init__(self, link: Link) -> None:
        tag = f"{os.getpid() % 100000}"
        self.a, self.b = f"spbg-a{tag}", f"spbg-b{tag}"
        self._link = link
        self._made: list[str] = []

    def open(self) -> None:
        link = self._link
        veth_a, veth_b = "spva", "spvb"
        for ns in (self.a, self.b):
            _ip("netns", "add", ns)
            self._made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", self.a, "link", "add", veth_a, "type", "veth", "peer", "name", veth_b, "netns", self.b)
        for ns, dev, addr in ((self.a, veth_a, SIDE_A), (self.b, veth_b, SIDE_B)):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            shape = ["rate", f"{link.rate_mbit}mbit", "burst", "64kb", "latency", f"{link.queue_ms}ms"]
            _run(["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", *shape])

    def close(self) -> None:
        for ns in self._made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        self._made.clear()

    def run(self, ns: str, *args: str, stdin: int | None = None) -> subprocess.Popen[str]:
        """``python -m loadtest.bench.netns_node ARGS`` inside namespace ``ns``."""
        command = ["ip", "netns", "exec", ns, sys.executable, "-m", "loadtest.bench.netns_node", *args]
        return subprocess.Popen(command, stdout=subprocess.PIPE, stdin=stdin, text=True)


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {result.stderr.strip()}")


def _ip(*args: str) -> None:
    _run(["ip", *args])


def _line(process: subprocess.Popen[str]) -> dict[str, float]:
    assert process.stdout is not None
    text = process.stdout.readline()
    if not text:
        raise RuntimeError(f"a benchmark process ended early ({process.args})")
    return json.loads(text)


@dataclass(slots=True)
class Run:
    alone: float  # seconds, preheat alone
    kept: float  # business throughput during the preheat / its baseline
    baseline_mbit: float
    with_business: float  # seconds, preheat beside the business flow


def _one(spaces: Namespaces, transport: str, torrent: Path, work: Path, seed_port: int) -> Run:
    """One preheat alone, then one beside the business flow."""
    leech_dir = work / "leech"

    def preheat() -> subprocess.Popen[str]:
        shutil.rmtree(leech_dir, ignore_errors=True)
        leech_dir.mkdir()
        args = [SIDE_B, transport, str(torrent), str(leech_dir), SIDE_A, str(seed_port)]
        return spaces.run(spaces.b, "leech", *args)

    alone = _result(preheat())["seconds"]
    baseline_s, business_s = 6.0, 20.0
    sink = spaces.run(spaces.b, "sink", SIDE_B, str(SINK_PORT))
    try:
        _line(sink)  # listening
        source = spaces.run(spaces.a, "source", SIDE_B, str(SINK_PORT), str(baseline_s + business_s))
        samples: list[tuple[float, int]] = []
        deadline = time.monotonic() + baseline_s
        while time.monotonic() < deadline:
            sample = _line(sink)
            samples.append((sample["t"], int(sample["bytes"])))
        leech = preheat()
        while True:
            sample = _line(sink)
            samples.append((sample["t"], int(sample["bytes"])))
            if sample.get("end"):
                break
        done = _result(leech)
        source.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            sink.kill()
        sink.wait()
    start, end = done["started"], done["started"] + done["seconds"]
    base = _rate(samples, samples[0][0] + 1.0, samples[0][0] + baseline_s)
    during = _rate(samples, start + 1.0, min(end, samples[-1][0]))
    return Run(alone, during / base if base else 0.0, base * 8 / 1e6, done["seconds"])


def _result(process: subprocess.Popen[str]) -> dict[str, float]:
    """The one line a process prints, once it has ended."""
    line = _line(process)
    process.wait(timeout=60)
    return line


def _rate(samples: list[tuple[float, int]], t0: float, t1: float) -> float:
    """Bytes per second between t0 and t1 (the samples nearest inside)."""
    inside = [(t, b) for t, b in samples if t0 <= t <= t1]
    if len(inside) < 2:
        return 0.0
    (ta, ba), (tb, bb) = inside[0], inside[-1]
    return (bb - ba) / (tb - ta) if tb > ta else 0.0


def bench_background(link: Link, blob_mib: int, runs: int) -> str:
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None:
        return "background: skipped: needs root and iproute2 (ip, tc) for network namespaces and shaping"
    work = Path(tempfile.mkdtemp(prefix="swarmpull-bench-bg-"))
    spaces = Namespaces(link)
    try:
        try:
            spaces.open()
        except RuntimeError as exc:
            return f"background: skipped: cannot create network namespaces here ({exc})"
        blob = work / ("sha256-" + "0" * 64 + ".data")
        with open(blob, "wb") as out:
            for _ in range(blob_mib):
                out.write(os.urandom(1 << 20))
        torrent = work / "blob.torrent"
        torrent.write_bytes(make_torrent(blob, 1 << 20).data)
        results: dict[str, list[Run]] = {}
        load = os.getloadavg()[0]
        for transport in ("utp", "tcp"):
            seed = spaces.run(
                spaces.a, "seed", SIDE_A, transport, str(torrent), str(work), stdin=subprocess.PIPE
            )
            try:
                port = int(_line(seed)["port"])
                results[transport] = [_one(spaces, transport, torrent, work, port) for _ in range(runs)]
            finally:
                if seed.stdin is not None:
                    seed.stdin.close()
                seed.wait(timeout=30)
        return _table(link, blob_mib, runs, results, load, os.getloadavg()[0])
    finally:
        spaces.close()
        shutil.rmtree(work, ignore_errors=True)


def _mmm(values: list[float], fmt: str = "{:.2f}") -> str:
    return "/".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def _table(
    link: Link, blob_mib: int, runs: int, results: dict[str, list[Run]], load0: float, load1: float
) -> str:
    lines = [
        f"background: a business TCP flow and a {blob_mib} MiB preheat on one link ({link});",
        f"  {runs} runs each, min/median/max; load average {load0:.1f} before, {load1:.1f} after",
        f"  {'preheat':<8}{'business kept':>16}{'business alone':>18}"
        f"{'preheat alone':>16}{'preheat beside':>18}",
    ]
    for transport, runs_of in results.items():
        lines.append(
            f"  {transport:<8}{_mmm([r.kept for r in runs_of]):>16}"
            f"{_mmm([r.baseline_mbit for r in runs_of], '{:.0f}') + ' Mbit/s':>18}"
            f"{_mmm([r.alone for r in runs_of], '{:.1f}') + ' s':>16}"
            f"{_mmm([r.with_business for r in runs_of], '{:.1f}') + ' s':>18}"
        )
    if "utp" in results and "tcp" in results:
        ratio = statistics.median(r.kept for r in results["utp"]) / max(
            1e-9, statistics.median(r.kept for r in results["tcp"])
        )
        lines.append(f"  business kept under a uTP preheat / under a TCP preheat (medians): {ratio:.2f}x")
    return "\n".join(lines)


async def run_background(link: Link | None = None, blob_mib: int = 64, runs: int = 3) -> str:
    return await asyncio.to_thread(bench_background, link or Link(), blob_mib, runs)
