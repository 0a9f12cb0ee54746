"""Preheat jobs, sans-IO: which nodes must hold which blobs, and how far each got.

A job is an image (its blobs: configs and layers, per platform) and a selection of
nodes (by zone, rack or name). Every node that matches when the job starts, or that
joins while it runs, is selected for good: the job is complete when every selected
node holds every blob verified, and a node that went away counts as unfinished. Blobs
are offered to nodes as the seed comes to hold them (``layer_ready``). At the deadline
a running job expires: its blobs are no longer handed out, and the nodes that did not
finish are named in its status.

Time is passed in (``now``, monotonic seconds); nothing here does I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from swarmpull.core.digest import Digest
from swarmpull.core.preheat import Selection


class JobState(enum.Enum):
    RESOLVING = "resolving"  # reading the image's manifests
    RUNNING = "running"  # blobs seeded, or being seeded, and handed out
    COMPLETE = "complete"  # every selected node holds every blob, verified
    EXPIRED = "expired"  # the deadline passed first
    FAILED = "failed"  # the image could not be read


class LayerState(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"


@dataclass(slots=True)
class Layer:
    """One blob of the image: a config or a layer."""

    digest: Digest
    size: int
    url: str  # where the seed reads it
    repository: str  # ``host/name``: the image it is pulled as
    ready: bool = False  # the seed holds it whole: nodes may fetch it
    private: bool = True  # read with a login: a node opens it with its own first (until seeded: unknown)
    error: str | None = None

    @property
    def task_id(self) -> str:
        return f"sha256-{self.digest.hex}"


@dataclass(slots=True)
class NodeLayer:
    state: LayerState = LayerState.PENDING
    done: int = 0  # bytes verified
    error: str | None = None


@dataclass(slots=True)
class PreheatJob:
    id: str
    image: str
    platform: str  # os/arch, or "all"
    selection: Selection
    created: float
    deadline: float
    state: JobState = JobState.RESOLVING
    error: str | None = None
    layers: list[Layer] = field(default_factory=list)
    nodes: dict[str, dict[str, NodeLayer]] = field(default_factory=dict)  # node -> task -> progress
    ended: float | None = None

    def __repr__(self) -> str:
        return f"<PreheatJob {self.id} {self.image} {self.state.name} nodes={len(self.nodes)}>"

    @property
    def active(self) -> bool:
        return self.state in (JobState.RESOLVING, JobState.RUNNING)

    # ------------------------------------------------------------------ events

    def resolved(self, layers: list[Layer]) -> None:
        """The image's blobs are known (duplicates, as two platforms share, once)."""
        seen: dict[str, Layer] = {}
        for layer in layers:
            seen.setdefault(layer.task_id, layer)
        self.layers = list(seen.values())
        self.state = JobState.RUNNING
        for progress in self.nodes.values():
            for layer in self.layers:
                progress.setdefault(layer.task_id, NodeLayer())

    def failed(self, now: float, error: str) -> None:
        self.state, self.error, self.ended = JobState.FAILED, error, now

    def layer_ready(self, task_id: str) -> None:
        for layer in self.layers:
            if layer.task_id == task_id:
                layer.ready = True

    def layer_failed(self, now: float, task_id: str, error: str) -> None:
        """The seed cannot read a blob: no node will get it, the job fails."""
        for layer in self.layers:
            if layer.task_id == task_id:
                layer.error = error
        self.failed(now, f"{task_id}: {error}")

    def offer(self, node: str, zone: str | None, rack: str | None) -> bool:
        """Select ``node`` if it matches and the job still runs; True if it is selected."""
        if node in self.nodes:
            return True
        if not self.active or not self.selection.matches(node, zone, rack):
            return False
        self.nodes[node] = {layer.task_id: NodeLayer() for layer in self.layers}
        return True

    def progress(self, node: str, task_id: str, state: LayerState, done: int, error: str | None) -> None:
        """What a selected node reports of one blob (others' reports are ignored)."""
        entry = self.nodes.get(node, {}).get(task_id)
        if entry is None or entry.state is LayerState.COMPLETE:
            return
        entry.state, entry.done, entry.error = state, done, error

    def tick(self, now: float) -> bool:
        """Time passed: complete or expire. True if the job ended now."""
        if not self.active:
            return False
        if self.state is JobState.RUNNING and self.nodes and self.unfinished() == []:
            self.state, self.ended = JobState.COMPLETE, now
            return True
        if now >= self.deadline:
            self.state, self.ended = JobState.EXPIRED, now
            return True
        return False

    # ----------------------------------------------------------------- reading

    def assigned(self, node: str) -> list[Layer]:
        """The blobs ``node`` should fetch now: those the seed holds, while the job runs."""
        if self.state is not JobState.RUNNING or node not in self.nodes:
            return []
        return [layer for layer in self.layers if layer.ready]

    def completed(self, node: str, task_id: str) -> bool:
        """``node`` reported the blob of ``task_id`` complete."""
        entry = self.nodes.get(node, {}).get(task_id)
        return entry is not None and entry.state is LayerState.COMPLETE

    def unfinished(self) -> list[str]:
        return sorted(
            node
            for node, layers in self.nodes.items()
            if any(entry.state is not LayerState.COMPLETE for entry in layers.values())
        )

    def status(self, now: float) -> dict[str, Any]:
        total = sum(layer.size for layer in self.layers)
        sizes = {layer.task_id: layer.size for layer in self.layers}
        nodes = {}
        for node, layers in sorted(self.nodes.items()):
            done = sum(
                sizes.get(t, 0) if e.state is LayerState.COMPLETE else e.done for t, e in layers.items()
            )
            complete = sum(1 for e in layers.values() if e.state is LayerState.COMPLETE)
            errors = [e.error for e in layers.values() if e.error]
            nodes[node] = {
                "bytes": done,
                "layers_complete": complete,
                "state": "complete" if complete == len(self.layers) and self.layers else "running",
                **({"error": errors[0]} if errors else {}),
            }
        return {
            "id": self.id,
            "image": self.image,
            "platform": self.platform,
            "selection": self.selection.to_json(),
            "state": self.state.value,
            "error": self.error,
            "deadline_in": round(max(0.0, self.deadline - now), 1),
            "bytes": total,
            "layers": [
                {"digest": str(layer.digest), "size": layer.size, "seeded": layer.ready, "error": layer.error}
                for layer in self.layers
            ],
            "nodes": nodes,
            "selected": len(self.nodes),
            "finished": len(self.nodes) - len(self.unfinished()),
            "unfinished": self.unfinished(),
        }
