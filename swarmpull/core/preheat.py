"""Wire types of preheat: what an operator asks for, and what nodes and the supernode
tell each other about it.

    POST /api/v1/preheat            PreheatRequest          ->  the job's status (201)
    GET  /api/v1/preheat/{id}                               ->  the job's status
    POST /api/v1/peers/{peer}/preheat   PreheatPoll         ->  PreheatWork

A node polls with its progress on each blob it was given; the answer is the blobs it
should hold now. With ``wait`` and nothing new since ``after`` (the version of the work
it has), the supernode holds the answer until there is (a long poll).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from swarmpull.core.fields import PEER_ID_RE, ProtocolError, _float, _int, _obj, _task_id
from swarmpull.core.oci import ImageReference, Platform

MAX_DEADLINE = 7 * 86400.0
MAX_LAYERS = 1024
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
LAYER_STATES = ("pending", "running", "complete", "failed")


@dataclass(frozen=True, slots=True)
class Selection:
    """Which nodes: every criterion given must match (none given: every node)."""

    zone: str | None = None
    rack: str | None = None
    nodes: frozenset[str] = frozenset()

    def matches(self, node: str, zone: str | None, rack: str | None) -> bool:
        return (
            (self.zone is None or zone == self.zone)
            and (self.rack is None or rack == self.rack)
            and (not self.nodes or node in self.nodes)
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in (("zone", self.zone), ("rack", self.rack)) if v}
        if self.nodes:
            out["nodes"] = sorted(self.nodes)
        return out


def parse_selection(raw: Any) -> Selection:
    """``{"zone"?, "rack"?, "nodes"?: [...]}``."""
    body = _obj(raw or {}, "'select'")
    unknown = set(body) - {"zone", "rack", "nodes"}
    if unknown:
        raise ProtocolError(f"'select' knows zone, rack and nodes, not {', '.join(sorted(unknown))}")
    values = {}
    for key in ("zone", "rack"):
        value = body.get(key)
        if value is not None and (not isinstance(value, str) or not _LABEL.match(value)):
            raise ProtocolError(f"'select.{key}' must be a label value")
        values[key] = value
    nodes = body.get("nodes") or []
    if not isinstance(nodes, list) or len(nodes) > 10_000:
        raise ProtocolError("'select.nodes' must be a list of node ids")
    for node in nodes:
        if not isinstance(node, str) or not PEER_ID_RE.fullmatch(node):
            raise ProtocolError("'select.nodes' must hold node ids")
    return Selection(values["zone"], values["rack"], frozenset(nodes))


@dataclass(frozen=True, slots=True)
class PreheatRequest:
    image: ImageReference
    platform: Platform | None  # None: every platform of an index
    selection: Selection = field(default_factory=Selection)
    deadline: float = 3600.0  # seconds from now

    def to_json(self) -> dict[str, Any]:
        return {
            "image": str(self.image),
            "platform": str(self.platform) if self.platform else "all",
            "select": self.selection.to_json(),
            "deadline": self.deadline,
        }


def parse_preheat_request(raw: Any, default_registry: str = "docker.io") -> PreheatRequest:
    body = _obj(raw, "body")
    image = body.get("image")
    if not isinstance(image, str) or not image or len(image) > 1024:
        raise ProtocolError("'image' must be an image reference, e.g. registry.example/team/app:v1")
    try:
        reference = ImageReference.parse(image, default_registry)
        platform_text = body.get("platform", "linux/amd64")
        if not isinstance(platform_text, str):
            raise ValueError("'platform' must be os/architecture[/variant] or all")
        platform = None if platform_text == "all" else Platform.parse(platform_text)
    except ValueError as exc:
        raise ProtocolError(str(exc)) from None
    return PreheatRequest(
        reference,
        platform,
        parse_selection(body.get("select")),
        _float(body, "deadline", 1.0, MAX_DEADLINE, default=3600.0),
    )


@dataclass(frozen=True, slots=True)
class LayerProgress:
    task_id: str
    state: str  # one of LAYER_STATES
    done: int = 0  # bytes verified
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"task_id": self.task_id, "state": self.state, "done": self.done}
        if self.error:
            body["error"] = self.error
        return body


@dataclass(frozen=True, slots=True)
class PreheatPoll:
    progress: list[LayerProgress] = field(default_factory=list)
    after: int = -1  # the version of the work the node has
    wait: float = 0.0  # seconds the answer may wait for new work

    def to_json(self) -> dict[str, Any]:
        return {"progress": [p.to_json() for p in self.progress], "after": self.after, "wait": self.wait}


def parse_preheat_poll(raw: Any) -> PreheatPoll:
    body = _obj(raw or {}, "body")
    items = body.get("progress") or []
    if not isinstance(items, list) or len(items) > MAX_LAYERS:
        raise ProtocolError(f"'progress' must be a list of at most {MAX_LAYERS} entries")
    progress = []
    for item in items:
        entry = _obj(item, "a progress entry")
        state = entry.get("state")
        if state not in LAYER_STATES:
            raise ProtocolError(f"'state' must be one of {', '.join(LAYER_STATES)}")
        error = entry.get("error")
        progress.append(
            LayerProgress(
                _task_id(entry.get("task_id"), "task_id"),
                state,
                _int(entry, "done", 0, 1 << 50, default=0),
                error[:500] if isinstance(error, str) else None,
            )
        )
    return PreheatPoll(
        progress, _int(body, "after", -1, 1 << 62, default=-1), _float(body, "wait", 0.0, 60.0, default=0.0)
    )


@dataclass(frozen=True, slots=True)
class PreheatBlob:
    """A blob a node should hold. ``image``: for a private blob, the image it is pulled
    as (``host/name``): the node opens its task with its own registry login first, and
    is given the torrent only if that login may pull it."""

    task_id: str
    size: int
    image: str | None = None


@dataclass(frozen=True, slots=True)
class PreheatWork:
    version: int
    layers: list[PreheatBlob]  # what the node should hold
    poll_in: float = 2.0  # seconds until the next poll while it has work

    def to_json(self) -> dict[str, Any]:
        layers: list[dict[str, Any]] = []
        for blob in self.layers:
            entry: dict[str, Any] = {"task_id": blob.task_id, "size": blob.size}
            if blob.image is not None:
                entry["image"] = blob.image
            layers.append(entry)
        return {"version": self.version, "layers": layers, "poll_in": self.poll_in}


def parse_preheat_work(raw: Any) -> PreheatWork:
    body = _obj(raw, "body")
    items = body.get("layers") or []
    if not isinstance(items, list) or len(items) > MAX_LAYERS:
        raise ProtocolError(f"'layers' must be a list of at most {MAX_LAYERS}")
    layers = []
    for item in items:
        entry = _obj(item, "a layer")
        image = entry.get("image")
        if image is not None and (not isinstance(image, str) or not 0 < len(image) <= 512):
            raise ProtocolError("'image' must be a repository of at most 512 characters")
        task_id = _task_id(entry.get("task_id"), "task_id")
        layers.append(PreheatBlob(task_id, _int(entry, "size", 0, 1 << 50), image))
    return PreheatWork(
        _int(body, "version", 0, 1 << 62), layers, _float(body, "poll_in", 0.1, 600.0, default=2.0)
    )
