"""The whole cluster from every replica's survey, and its history.

Each replica surveys what it owns (tasks are owned by one replica at a time) and what
its nodes reported to it; the cluster is the sum. A node's rows are merged across
replicas (its layers' tasks may have different owners): bytes add up, parents join,
the worst state wins. Views come from the cluster state, which other processes write:
a view that is not the expected shape is skipped, not trusted.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

_STATES = ("quarantined", "degraded", "active")  # worst first
_SUMMED_NODE_FIELDS = ("tasks", "tasks_done", "down", "up", "down_rate", "up_rate")
HISTORY_POINTS = 900  # fifteen minutes at one point a second
_TOTALS = ("from_peers", "from_seed", "registry")


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0.0
    return float(value)


def merge(views: list[Any]) -> dict[str, Any]:
    """One cluster view from the replicas' surveys (``Survey.take``)."""
    good = [v for v in views if isinstance(v, dict) and isinstance(v.get("tasks"), list)]
    totals = {k: sum(_number((v.get("totals") or {}).get(k)) for v in good) for k in _TOTALS}
    rates = {k: sum(_number((v.get("rates") or {}).get(k)) for v in good) for k in _TOTALS}
    tasks: dict[str, dict[str, Any]] = {}
    for view in good:
        for task in view["tasks"]:
            if not isinstance(task, dict) or not isinstance(task.get("id"), str):
                continue
            other = tasks.get(task["id"])  # two replicas list it only while it changes hands
            if other is None or _number(task.get("members")) > _number(other.get("members")):
                tasks[task["id"]] = task
    detailed = [v for v in good if isinstance(v.get("nodes"), list)]
    nodes = _merge_nodes(detailed) if detailed else None
    received = totals["from_peers"] + totals["from_seed"]
    peers = [_number(v.get("peers")) for v in good]  # without node rows: a lower bound
    return {
        "at": max((_number(v.get("at")) for v in good), default=0.0),
        "replicas": sorted(str(v.get("replica")) for v in good),
        "peers": len(nodes) if nodes is not None else int(max(peers, default=0)),
        "totals": totals,
        "rates": rates,
        "saved": {"received": received, "bytes": max(0.0, received - totals["registry"])},
        "tasks": sorted(tasks.values(), key=lambda t: str(t.get("id"))),
        "nodes": nodes,
    }


def _merge_nodes(views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    nodes: dict[str, dict[str, Any]] = {}
    for view in views:
        for row in view["nodes"]:
            if not isinstance(row, dict) or not isinstance(row.get("id"), str):
                continue
            entry = nodes.get(row["id"])
            if entry is None:
                parents = list(row.get("parents") or [])[:8]
                nodes[row["id"]] = {**row, "parents": parents, "channel": row.get("channel") is True}
                continue
            for key in _SUMMED_NODE_FIELDS:
                if row.get(key) is not None or entry.get(key) is not None:
                    entry[key] = _number(entry.get(key)) + _number(row.get(key))
            for key in ("zone", "rack"):
                entry[key] = entry.get(key) or row.get(key)
            entry["channel"] = entry["channel"] or row.get("channel") is True  # open at either
            states = [s for s in (entry.get("state"), row.get("state")) if s in _STATES]
            entry["state"] = min(states, key=_STATES.index) if states else "active"
            for parent in row.get("parents") or []:
                if parent not in entry["parents"] and len(entry["parents"]) < 8:
                    entry["parents"].append(parent)
    return sorted(
        nodes.values(),
        key=lambda r: (_STATES.index(r.get("state", "active")) if r.get("state") in _STATES else 2, r["id"]),
    )


class History:
    """The cluster's totals over time, a point a tick, the last ``HISTORY_POINTS``."""

    def __init__(self, size: int = HISTORY_POINTS) -> None:
        self.points: deque[dict[str, float]] = deque(maxlen=size)

    def add(self, view: dict[str, Any]) -> dict[str, float]:
        tasks = view["tasks"]
        point = {
            "t": view["at"],
            "from_peers": view["rates"]["from_peers"],
            "from_seed": view["rates"]["from_seed"],
            "registry": view["rates"]["registry"],
            "done": sum(_number(t.get("done")) for t in tasks),
            "members": sum(_number(t.get("members")) for t in tasks),
        }
        self.points.append(point)
        return point
