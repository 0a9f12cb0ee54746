"""Bytes moved in the swarm, as the nodes report them.

The supernode sees no piece transfer: each node's periodic report says, per parent, how
many bytes it received from it since its last report (``ParentStats``). Summed here, that
is each node's bytes down, each parent's bytes up, each task's bytes, and the totals from
peers and from the seed. A report adds O(its parents) to a few dictionaries: reports are
the supernode's hottest path, and this is all the dashboard asks of it.

What nodes report is what they claim: a hostile node can inflate its own numbers and
those of the parents it names. The dashboard shows them as reported; nothing decides on
them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

FORGET_EVERY = 60.0  # seconds between dropping the rows of departed nodes and ended tasks


class ParentBytes(Protocol):
    id: str
    bytes: int


class Traffic:
    """Cumulative bytes since this supernode started. One writer: ``supernode.reports``."""

    def __init__(self, seed_id: str) -> None:
        self.seed_id = seed_id
        self.down: dict[str, int] = {}  # node -> bytes it received
        self.up: dict[str, int] = {}  # node -> bytes others received from it
        self.by_task: dict[str, int] = {}  # task -> bytes its members received
        self.from_peers = 0
        self.from_seed = 0
        self._tidied_at = 0.0

    def __repr__(self) -> str:
        return f"<Traffic peers={self.from_peers} seed={self.from_seed} nodes={len(self.down)}>"

    def reported(self, task_id: str, node: str, parents: Iterable[ParentBytes]) -> None:
        received = 0
        for parent in parents:
            size = parent.bytes
            if size <= 0:
                continue
            received += size
            if parent.id == self.seed_id:
                self.from_seed += size
            else:
                self.from_peers += size
                self.up[parent.id] = self.up.get(parent.id, 0) + size
        if received:
            self.down[node] = self.down.get(node, 0) + received
            self.by_task[task_id] = self.by_task.get(task_id, 0) + received

    def tidy(
        self, now: float, nodes: Callable[[], Iterable[str]], tasks: Callable[[], Iterable[str]]
    ) -> None:
        """Now and then (the reports' tick), keep only the rows of ``nodes()`` and ``tasks()``."""
        if now - self._tidied_at >= FORGET_EVERY:
            self._tidied_at = now
            self.forget(set(nodes()), set(tasks()))

    def forget(self, keep_nodes: set[str], keep_tasks: set[str]) -> None:
        """Drop the rows of nodes and tasks that are gone (the totals keep their bytes)."""
        for table, keep in ((self.down, keep_nodes), (self.up, keep_nodes), (self.by_task, keep_tasks)):
            for key in [k for k in table if k not in keep]:
                del table[key]
