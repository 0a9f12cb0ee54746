"""One replica's part of the dashboard: its tasks, its view of the nodes, its totals.

Taken once a tick, whatever the swarm does, from state the supernode keeps anyway (the
scheduler's members, the seed's tasks, ``Presence``'s control channels, ``Traffic``, the
upstream byte counter), each read from its one writer and never written: the cost
grows with tasks, and with members only while someone watches (``detail``), never with
pieces. The result is plain JSON data, so replicas can share it through the cluster
state and any of them can merge everyone's (``merge``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from supernode.dashboard.traffic import Traffic
from supernode.scheduler import Scheduler, SourceState
from supernode.seed_task import SeedTask
from swarmpull.core.tasks import redact_url

MAX_NODES = 2000  # node rows one replica publishes: the most interesting first
MAX_PARENTS = 8  # parents listed per node

_STATE_ORDER = {SourceState.QUARANTINED: 0, SourceState.DEGRADED: 1, SourceState.ACTIVE: 2}


class Survey:
    def __init__(
        self,
        replica: str,
        scheduler: Scheduler,
        tasks: Callable[[], Mapping[str, SeedTask]],
        traffic: Traffic,
        upstream_bytes: Callable[[], float],
        has_channel: Callable[[str], bool],
    ) -> None:
        self.replica = replica
        self._scheduler = scheduler
        self._tasks = tasks
        self._traffic = traffic
        self._upstream = upstream_bytes
        self._has_channel = has_channel
        self._last_at: float | None = None
        self._last_totals: dict[str, float] = {}
        self._last_tasks: dict[str, int] = {}  # task -> bytes, at the last survey
        self._last_nodes: dict[str, tuple[int, int]] = {}  # node -> (down, up), at the last detailed one

    def take(self, at: float, monotonic: float, detail: bool) -> dict[str, Any]:
        """This replica's view at wall-clock ``at``; node rows only with ``detail``."""
        traffic = self._traffic
        elapsed = monotonic - self._last_at if self._last_at is not None else 0.0
        totals = {
            "from_peers": traffic.from_peers,
            "from_seed": traffic.from_seed,
            "registry": self._upstream(),
        }
        rates = {k: self._rate(v - self._last_totals.get(k, v), elapsed) for k, v in totals.items()}
        view: dict[str, Any] = {
            "replica": self.replica,
            "at": at,
            "peers": self._scheduler.peer_count(),
            "totals": totals,
            "rates": rates,
            "tasks": self._task_rows(elapsed, detail),
            "nodes": self._node_rows(elapsed) if detail else None,
        }
        self._last_at, self._last_totals = monotonic, totals
        self._last_tasks = {row["id"]: row["bytes"] for row in view["tasks"]}
        self._last_nodes = {row["id"]: (row["down"], row["up"]) for row in view["nodes"] or ()}
        return view

    @staticmethod
    def _rate(delta: float, elapsed: float) -> float:
        # Counters restart with the supernode: a drop is no negative rate.
        return round(max(0.0, delta) / elapsed, 1) if elapsed > 0 else 0.0

    def _task_rows(self, elapsed: float, detail: bool) -> list[dict[str, Any]]:
        scheduler, by_task = self._scheduler, self._traffic.by_task
        rows = []
        for task in self._tasks().values():
            blob = task.blob
            moved = by_task.get(task.id, 0)
            rate = self._rate(moved - self._last_tasks.get(task.id, moved), elapsed)  # new: 0
            row: dict[str, Any] = {
                "id": task.id,
                "url": redact_url(task.url) if task.url else None,
                "digest": str(task.digest) if task.digest else None,
                "state": task.state.value,
                "size": blob.meta.size if blob else None,
                "piece_size": blob.meta.piece_size if blob else None,
                "pieces": blob.geometry.count if blob else None,
                "seeded": blob.verified_count if blob else 0,
                "members": scheduler.members(task.id),
                "done": scheduler.done_count(task.id),
                "bytes": moved,
                "bytes_per_second": rate,
                "pieces_per_second": round(rate / blob.meta.piece_size, 2) if blob else 0.0,
                "error": task.error,
            }
            if detail:  # those downloading hold a piece; the others wait for their first
                views = scheduler.member_views(task.id)
                row["downloading"] = sum(1 for _, held, done, _ in views if held and not done)
                row["waiting"] = sum(1 for _, held, _, _ in views if not held)
            rows.append(row)
        return rows

    def _node_rows(self, elapsed: float) -> list[dict[str, Any]]:
        scheduler, traffic = self._scheduler, self._traffic
        nodes: dict[str, dict[str, Any]] = {}

        def row(peer_id: str) -> dict[str, Any]:
            found = nodes.get(peer_id)
            if found is None:
                found = nodes[peer_id] = {"id": peer_id, "tasks": 0, "tasks_done": 0, "parents": []}
            return found

        for peer_id in scheduler.peers():
            row(peer_id)
        for task_id in self._tasks():
            for peer_id, _, done, parents in scheduler.member_views(task_id):
                entry = row(peer_id)
                entry["tasks"] += 1
                entry["tasks_done"] += done
                known = entry["parents"]
                for parent in parents:
                    if parent not in known and len(known) < MAX_PARENTS:
                        known.append(parent)
        for peer_id, entry in nodes.items():
            labels = scheduler.peer_view(peer_id)
            zone, rack, state = labels if labels is not None else (None, None, SourceState.ACTIVE)
            down, up = traffic.down.get(peer_id, 0), traffic.up.get(peer_id, 0)
            last = self._last_nodes.get(peer_id)  # None: not in the last detailed survey
            entry.update(
                zone=zone,
                rack=rack,
                state=state.value,
                channel=self._has_channel(peer_id),  # its heartbeat here; else it calls
                down=down,
                up=up,
                down_rate=self._rate(down - last[0], elapsed) if last else None,
                up_rate=self._rate(up - last[1], elapsed) if last else None,
            )
        rows = sorted(
            nodes.values(),
            key=lambda r: (_STATE_ORDER[SourceState(r["state"])], r["tasks_done"] == r["tasks"], r["id"]),
        )
        return rows[:MAX_NODES]
