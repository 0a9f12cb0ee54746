"""The scheduler's state: peers and seeds, tasks, each peer's standing in a task, transfers.

Plain records with no behaviour beyond small queries; ``Scheduler`` is their one writer.
"""

from __future__ import annotations

from collections import OrderedDict

from supernode.scheduler.indexed_set import IndexedSet
from supernode.scheduler.model import SourceState


class Flight:
    """One assigned transfer: ``requester`` fetches ``piece`` of ``task`` from ``source``."""

    __slots__ = ("piece", "requester", "source", "started", "task")

    def __init__(self, task: str, piece: int, requester: str, source: str, started: float):
        self.task = task
        self.piece = piece
        self.requester = requester
        self.source = source
        self.started = started

    def __repr__(self) -> str:
        return f"<Flight {self.task[:14]}#{self.piece} {self.source}->{self.requester}>"


class Peer:
    """A registered peer or seed, as a source of uploads and as a requester."""

    __slots__ = (
        "flights_out",
        "id",
        "is_seed",
        "last_seen",
        "rack",
        "slots",
        "state",
        "tasks",
        "unreachable",
        "uploads",
        "zone",
    )

    def __init__(self, peer_id: str, zone: str | None, rack: str | None, slots: int, is_seed: bool) -> None:
        self.id = peer_id
        self.zone = zone
        self.rack = rack
        self.slots = slots
        self.is_seed = is_seed
        self.state = SourceState.ACTIVE
        self.uploads = 0
        self.last_seen = 0.0
        self.tasks: set[str] = set()
        self.flights_out: set[Flight] = set()
        self.unreachable: dict[str, float] = {}  # reporter -> when

    def __repr__(self) -> str:
        kind = "seed" if self.is_seed else "peer"
        return f"<{kind} {self.id} {self.state.name} {self.uploads}/{self.slots}>"


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

    __slots__ = ("count", "holders", "id", "inflight", "members", "seed_id", "seeded", "waiters")

    def __init__(self, task_id: str, count: int, seed_id: str) -> None:
        self.id = task_id
        self.count = count
        self.seed_id = seed_id
        self.seeded = bytearray(count)
        self.holders = [IndexedSet() for _ in range(count)]
        self.inflight = [0] * count
        self.members: dict[str, Member] = {}
        self.waiters: OrderedDict[str, int] = OrderedDict()  # peer -> want

    def __repr__(self) -> str:
        return f"<Task {self.id[:20]} pieces={self.count} members={len(self.members)}>"
