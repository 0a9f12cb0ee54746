"""The scheduler's state: peers and seeds, tasks, each peer's standing in a task, transfers.

Plain records with no behaviour beyond small queries; ``Scheduler`` is their one writer.
"""

from __future__ import annotations

from collections import OrderedDict

from supernode.scheduler.indexed_set import IndexedSet
from supernode.scheduler.model import SourceState


class Flight:
    """One assigned transfer: ``requester`` fetches ``piece`` of ``task`` from ``source``."""

    __slots__ = ("load", "piece", "requester", "source", "started", "task")

    def __init__(self, task: str, piece: int, requester: str, source: str, started: float, load: int):
        self.task = task
        self.piece = piece
        self.requester = requester
        self.source = source
        self.started = started
        self.load = load  # the source's uploads, this one included, when it was assigned

    def __repr__(self) -> str:
        return f"<Flight {self.task[:14]}#{self.piece} {self.source}->{self.requester}>"


class Peer:
    """A registered peer or seed, as a source of uploads and as a requester."""

    __slots__ = (
        "capacity",
        "degraded_until",
        "flights_out",
        "id",
        "is_seed",
        "last_seen",
        "rack",
        "reported",
        "slots",
        "state",
        "tasks",
        "unreachable",
        "uploads",
        "zone",
    )

    def __init__(
        self, peer_id: str, zone: str | None, rack: str | None, slots: int, is_seed: bool, capacity: float
    ) -> None:
        self.id = peer_id
        self.zone = zone
        self.rack = rack
        self.slots = slots
        self.is_seed = is_seed
        self.capacity = capacity  # upload bytes per second it declared
        self.state = SourceState.ACTIVE
        self.degraded_until = 0.0
        self.uploads = 0  # transfers assigned from it and not yet reported
        self.reported = 0  # uploads it says it is serving (any task, any requester)
        self.last_seen = 0.0
        self.tasks: set[str] = set()
        self.flights_out: set[Flight] = set()
        self.unreachable: dict[str, float] = {}  # reporter -> when

    def __repr__(self) -> str:
        kind = "seed" if self.is_seed else "peer"
        return f"<{kind} {self.id} {self.state.name} {self.load}/{self.slots}>"

    @property
    def load(self) -> int:
        """Uploads under way: what we assigned, or what it reports if that is more."""
        return max(self.uploads, self.reported)

    def has_room(self, piece_size: int, pace: float) -> bool:
        """Room for one more upload of a ``piece_size`` piece: a free slot, and enough
        bandwidth that every upload moves at least a piece per ``pace`` seconds."""
        concurrent = min(self.slots, max(1, int(self.capacity * pace / piece_size)))
        return self.load < concurrent


class Member:
    """A peer's standing in one task: pieces held, transfers in flight, its blacklist."""

    __slots__ = ("blacklist", "flights", "have", "have_count", "peer_id")

    def __init__(self, peer_id: str, count: int) -> None:
        self.peer_id = peer_id
        self.have = bytearray(count)
        self.have_count = 0
        self.flights: dict[int, list[Flight]] = {}
        self.blacklist: dict[str, float] = {}  # source -> until

    def blacklisted(self, source: str, now: float) -> bool:
        until = self.blacklist.get(source)
        if until is None:
            return False
        if until <= now:
            del self.blacklist[source]
            return False
        return True


class Task:
    """One blob being distributed: piece availability and its members."""

    __slots__ = (
        "count",
        "holders",
        "id",
        "inflight",
        "members",
        "piece_size",
        "seed_id",
        "seeded",
        "waiters",
    )

    def __init__(self, task_id: str, count: int, seed_id: str, piece_size: int) -> None:
        self.id = task_id
        self.count = count
        self.piece_size = piece_size
        self.seed_id = seed_id
        self.seeded = bytearray(count)
        self.holders = [IndexedSet() for _ in range(count)]
        self.inflight = [0] * count
        self.members: dict[str, Member] = {}
        self.waiters: OrderedDict[str, int] = OrderedDict()  # peer -> want

    def __repr__(self) -> str:
        return f"<Task {self.id[:20]} pieces={self.count} members={len(self.members)}>"
