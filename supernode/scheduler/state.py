"""The scheduler's state: peers and seeds, tasks, each peer's standing in a task, transfers.

Plain records with small queries; ``Scheduler`` is their one writer. Sets of pieces are
Python ints used as bitsets (bit ``p`` set: piece ``p`` is in), so "what could this peer
get from that one" is one ``&`` however many pieces a blob has.
"""

from __future__ import annotations

from collections import OrderedDict

from supernode.scheduler.indexed_set import IndexedSet
from supernode.scheduler.model import SourceState

_BYTE_BITS = [tuple(b for b in range(8) if value >> b & 1) for value in range(256)]


def bits(mask: int) -> list[int]:
    """The pieces in a bitset, lowest first (a byte at a time: pieces run to thousands)."""
    data = mask.to_bytes((mask.bit_length() + 7) // 8, "little")
    return [i * 8 + b for i, value in enumerate(data) if value for b in _BYTE_BITS[value]]


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
        "_caps",
        "capacity",
        "degraded_until",
        "flights_out",
        "id",
        "is_seed",
        "last_seen",
        "rack",
        "reported",
        "requesting",
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
        self.requesting = 0  # transfers assigned to it as requester, not yet reported
        self.last_seen = 0.0
        self.tasks: set[str] = set()
        self.flights_out: set[Flight] = set()
        self.unreachable: dict[str, float] = {}  # reporter -> when
        self._caps: dict[int, int] = {}  # piece size -> concurrent uploads it can pace

    def __repr__(self) -> str:
        kind = "seed" if self.is_seed else "peer"
        return f"<{kind} {self.id} {self.state.name} {self.load}/{self.slots}>"

    @property
    def load(self) -> int:
        """Uploads under way: what we assigned, or what it reports if that is more."""
        return max(self.uploads, self.reported)

    def cap(self, piece_size: int, pace: float) -> int:
        """Uploads of ``piece_size`` pieces it can serve at once: within its slots, and
        each moving at least a piece per ``pace`` seconds on its bandwidth."""
        cap = self._caps.get(piece_size)
        if cap is None:
            cap = self._caps[piece_size] = min(self.slots, max(1, int(self.capacity * pace / piece_size)))
        return cap

    def has_room(self, piece_size: int, pace: float) -> bool:
        """Room for one more upload of a ``piece_size`` piece."""
        cap = self.cap(piece_size, pace)
        return self.uploads < cap and self.reported < cap


class Member:
    """A peer's standing in one task: pieces held, transfers in flight, its blacklist."""

    __slots__ = ("blacklist", "flight_bits", "flights", "have", "have_count", "peer_id")

    def __init__(self, peer_id: str) -> None:
        self.peer_id = peer_id
        self.have = 0  # bitset of pieces held
        self.have_count = 0
        self.flights: dict[int, list[Flight]] = {}
        self.flight_bits = 0  # bitset of pieces in flight
        self.blacklist: dict[str, float] = {}  # source -> until

    def holds(self, piece: int) -> bool:
        return bool(self.have >> piece & 1)

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
        "held",
        "held_bits",
        "holders",
        "id",
        "incomplete",
        "inflight",
        "members",
        "piece_size",
        "roomy",
        "seed_id",
        "seeded",
        "supply",
        "waiters",
    )

    def __init__(self, task_id: str, count: int, seed_id: str, piece_size: int) -> None:
        self.id = task_id
        self.count = count
        self.piece_size = piece_size
        self.seed_id = seed_id
        self.seeded = 0  # bitset of pieces the seed holds
        self.holders = [IndexedSet() for _ in range(count)]  # peers per piece
        self.held = [0] * count  # len(holders[p]), read in the hot path
        self.held_bits = 0  # bitset of pieces at least one peer holds
        self.inflight = [0] * count
        self.members: dict[str, Member] = {}
        self.waiters: OrderedDict[str, int] = OrderedDict()  # peer -> want
        self.roomy = IndexedSet()  # members holding a piece with room for an upload
        self.supply = 0  # concurrent uploads its holders (and seed) can serve, together
        self.incomplete = 0  # members still missing pieces

    def __repr__(self) -> str:
        return f"<Task {self.id[:20]} pieces={self.count} members={len(self.members)}>"

    @property
    def available(self) -> int:
        """Bitset of pieces someone can serve."""
        return self.seeded | self.held_bits
