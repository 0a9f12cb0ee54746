"""A surge after the fact: the load-test report made from ``--events`` files.

``swarmpull events summarize FILE...`` reads the files of any daemons (supernodes and
peers, several machines: events carry wall-clock times) and reports what the load test
reports: each node's completion time, from its first download opened to its last one
verified (a node whose last attempt at some blob failed did not complete); the bytes the
peers received by source (peer, seed, upstream: their ``piece_finished`` and direct
``upstream_read`` events); and registry egress over time (every ``upstream_read``: the
supernodes' per piece, the peers' direct reads). There is no bound: the files do not say
the links' speeds.

The files are input like any other: a line that is not a JSON object of the schema's
shape (a line cut short by a full disk, a stray write) is counted and skipped, and a line
longer than ``MAX_LINE`` is not parsed at all.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.report import ModeResult

MAX_LINE = 64 * 1024


@dataclass(slots=True)
class _Node:
    first_open: float = math.inf
    last_finish: float = -math.inf
    outcome: dict[str, bool] = field(default_factory=dict)  # task -> its last outcome


@dataclass(slots=True)
class Replay:
    """What the events say, gathered line by line (``add``), then ``result()``."""

    events: int = 0
    malformed: int = 0
    dropped: int = 0  # events the writers could not write (their events_dropped counts)
    nodes: dict[str, _Node] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # task -> its size
    sources: dict[str, float] = field(default_factory=dict)
    upstream: list[tuple[float, int]] = field(default_factory=list)  # (t, bytes) of each read
    fallbacks: int = 0
    piece_failures: int = 0
    quarantined: set[str] = field(default_factory=set)
    supernodes: set[str] = field(default_factory=set)
    _file_dropped: int = 0

    def read(self, path: Path) -> None:
        """Every line of one file (one writer: its events_dropped counts are running totals)."""
        self._file_dropped = 0
        with path.open("rb") as lines:
            for raw in lines:
                if len(raw) > MAX_LINE:
                    self.malformed += 1
                    continue
                try:
                    event = json.loads(raw)
                except ValueError:
                    event = None
                if not self.add(event):
                    self.malformed += 1
        self.dropped += self._file_dropped

    def add(self, event: Any) -> bool:
        """Take one event; False if it is not of the schema's shape."""
        if not isinstance(event, dict) or not _is_number(event.get("t")):
            return False
        if not isinstance(event.get("event"), str):
            return False
        kind, t = event["event"], float(event["t"])
        role, node, task = event.get("role"), event.get("node"), event.get("task")
        self.events += 1
        if kind == "events_dropped" and _is_number(event.get("count")):
            self._file_dropped = max(self._file_dropped, int(event["count"]))
        elif role == "supernode":
            if isinstance(node, str):
                self.supernodes.add(node)
            if kind == "upstream_read" and _is_number(event.get("bytes")):
                self.upstream.append((t, int(event["bytes"])))
            elif kind == "quarantined" and isinstance(event.get("peer"), str):
                self.quarantined.add(event["peer"])
        elif role == "peer" and isinstance(node, str) and isinstance(task, str):
            self._peer(kind, t, node, task, event)
        return True

    def _peer(self, kind: str, t: float, node: str, task: str, event: dict[str, Any]) -> None:
        state = self.nodes.get(node)
        if state is None:
            state = self.nodes[node] = _Node()
        size = event.get("bytes")
        if kind == "task_opened":
            state.first_open = min(state.first_open, t)
            state.outcome.setdefault(task, False)
        elif kind == "task_finished":
            state.outcome[task] = event.get("ok") is True
            if state.outcome[task]:
                state.last_finish = max(state.last_finish, t)
                if _is_number(event.get("size")):
                    self.sizes[task] = int(event["size"])
        elif kind == "piece_finished" and _is_number(size):
            source = "seed" if event.get("seed") is True else "peer"
            self.sources[source] = self.sources.get(source, 0.0) + size
        elif kind == "piece_failed":
            self.piece_failures += 1
        elif kind == "fallback":
            self.fallbacks += 1
        elif kind == "upstream_read" and _is_number(size):
            self.sources["upstream"] = self.sources.get("upstream", 0.0) + size
            self.upstream.append((t, int(size)))

    def result(self) -> ModeResult:
        started = [n.first_open for n in self.nodes.values() if n.first_open < math.inf]
        t0 = min(started, default=0.0)
        times = sorted(
            n.last_finish - n.first_open
            for n in self.nodes.values()
            if n.outcome and all(n.outcome.values()) and n.first_open < math.inf
        )
        ends = [n.last_finish for n in self.nodes.values() if n.last_finish > -math.inf]
        egress, timeline = 0, [(0.0, 0)]
        for t, size in sorted(self.upstream):
            egress += size
            timeline.append((max(0.0, t - t0), egress))
        extra: dict[str, Any] = {
            "events read": self.events,
            "malformed lines": self.malformed,
            "events dropped by writers": self.dropped,
            "supernodes": len(self.supernodes),
            "fallbacks to the registry": self.fallbacks,
            "piece failures": self.piece_failures,
            "peers quarantined": len(self.quarantined),
        }
        return ModeResult(
            mode="events",
            nodes=len(self.nodes),
            completed=len(times),
            failed=len(self.nodes) - len(times),
            image_size=sum(self.sizes.values()),
            registry_egress=egress,
            completion_times=times,
            bound=0.0,
            wall_time=max(ends, default=t0) - t0,
            extra=extra,
            egress_timeline=timeline,
            sources={k: self.sources.get(k, 0.0) for k in ("peer", "seed", "upstream")},
        )


def summarize(paths: Iterable[Path]) -> ModeResult:
    """The report of the events in ``paths``; OSError if one cannot be read."""
    replay = Replay()
    for path in paths:
        replay.read(path)
    return replay.result()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
