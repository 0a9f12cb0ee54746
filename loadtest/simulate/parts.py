"""The parts of a simulated surge (``swarm``): the layers, the nodes, a node's download
of a layer and a source's piece server. State only: ``swarm.SwarmSimulation`` is the one
writer of all of it."""

from __future__ import annotations

import math
from collections import deque

from loadtest.simulate.flows import Flow, Link
from peer.policy import PiecePolicy
from peer.share import LinkShare
from swarmpull.core.geometry import PieceGeometry


class Layer:
    """One layer: its task, geometry, and what the seed holds."""

    __slots__ = ("geometry", "id", "index", "lengths", "seeded")

    def __init__(self, index: int, geometry: PieceGeometry) -> None:
        self.index = index
        self.id = f"sha256-{index:064x}"
        self.geometry = geometry
        self.lengths = [geometry.length(piece) for piece in range(geometry.count)]
        self.seeded = Bits()


class Bits:
    """A piece map (``MapView``): the holder's own, read live by its children."""

    __slots__ = ("bits",)

    def __init__(self) -> None:
        self.bits = 0


class Download:
    """One node's download of one layer."""

    __slots__ = ("done_at", "due", "every", "flows", "idle", "layer", "map", "policy", "recheck")

    def __init__(self, layer: Layer, policy: PiecePolicy) -> None:
        self.layer = layer
        self.policy = policy
        self.map = Bits()  # what this node holds, as its children see it
        self.flows: dict[tuple[int, str], Flow] = {}
        self.done_at: float | None = None
        self.idle = False  # room and nothing to fetch: woken by its parents' new pieces
        self.due = math.inf  # when it reports next (0: as soon as it can)
        self.every = 0.0  # the interval the supernode last asked for
        self.recheck = math.inf  # when an idle download looks at its parents again


class Uploads:
    """A source's piece server, as the daemon's: at most ``slots`` uploads at once, as many
    more wait in line for a free slot, and one more is refused (busy)."""

    __slots__ = ("active", "link", "queue", "slots")

    def __init__(self, link: Link, slots: int) -> None:
        self.link = link
        self.slots = slots
        self.active = 0
        self.queue: deque[tuple] = deque()  # type: ignore[type-arg]


class Node:
    __slots__ = (
        "calling", "done_at", "downloads", "failed", "flush_at", "full", "id", "joined", "joined_at",
        "link", "share", "uploads", "watchers",
    )  # fmt: skip

    def __init__(self, node_id: str, link: Link, uploads: Uploads) -> None:
        self.id = node_id
        self.calling = 0  # calls to the supernode under way
        self.flush_at = math.inf  # when its control channel looks at what is due next
        self.full = False  # a download found every download slot taken: all look at the next free one
        self.link = link
        self.uploads = uploads
        self.joined = False
        self.joined_at = 0.0
        self.failed = False
        self.done_at: float | None = None
        self.downloads: dict[str, Download] = {}
        self.share = LinkShare()  # its link, oldest download first, as the daemon's
        # task -> children that wait on our pieces (insertion-ordered, so a run is the same
        # every time: a set orders by address)
        self.watchers: dict[str, dict[Node, None]] = {}
