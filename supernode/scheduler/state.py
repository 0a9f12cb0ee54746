"""The scheduler's state: peers and seeds, tasks, and each peer's standing in a task.

Plain records with small queries; ``Scheduler`` is their one writer. Sets of pieces are
bitsets (``swarmpull.core.bitfield``), so "what could this peer get from that one" is one
``&`` however many pieces a blob has.
"""

from __future__ import annotations

import math

from supernode.scheduler.indexed_set import IndexedSet
from supernode.scheduler.model import SourceState


class Peer:
    """A registered peer or a seed: a source of uploads, and a requester."""

    __slots__ = (
        "capacity",
        "check_until",
        "checked_at",
        "cleared_until",
        "corrupt",
        "deferred",
        "degraded_until",
        "failures",
        "id",
        "is_seed",
        "last_seen",
        "rack",
        "served_at",
        "serves",
        "state",
        "tasks",
        "zone",
    )

    def __init__(
        self, peer_id: str, zone: str | None, rack: str | None, serves: bool, capacity: float, is_seed: bool
    ) -> None:
        self.id = peer_id
        self.zone = zone
        self.rack = rack
        self.serves = serves  # it runs a piece server others can reach
        self.capacity = capacity  # upload bytes per second it declared
        self.is_seed = is_seed
        self.state = SourceState.ACTIVE
        self.degraded_until = 0.0
        self.last_seen = 0.0
        self.served_at = -1e18  # when a requester last reported bytes from it
        self.tasks: set[str] = set()
        self.failures: dict[str, float] = {}  # requester -> when it reported us failing
        self.corrupt: set[str] = set()  # requesters that reported corrupt pieces from us
        self.checked_at = -1e18  # when the supernode last set out to check a piece of ours
        self.check_until = 0.0  # a check is under way until then: the witnesses wait for it
        self.cleared_until = 0.0  # a check found our bytes right: corrupt claims are lies
        self.deferred = False  # the last check could not be made: the witnesses wait for one

    def __repr__(self) -> str:
        kind = "seed" if self.is_seed else "peer"
        return f"<{kind} {self.id} {self.state.name}>"


MAX_KEPT_AWAY = 256  # sources one member keeps away at once (it has a handful of parents)


class Member:
    """A peer's standing in one task: pieces held (as last reported), its parents, its
    children, the parents it dropped."""

    __slots__ = (
        "blacklist",
        "children",
        "claim_checked_at",
        "claimed_at",
        "done",
        "have",
        "have_count",
        "parents",
        "peer_id",
    )

    def __init__(self, peer_id: str) -> None:
        self.peer_id = peer_id
        self.have = 0
        self.claimed_at = -math.inf  # when it last said what it holds (never)
        self.claim_checked_at = -1e18  # when the supernode last set out to check a claim
        self.have_count = 0
        self.done = False
        self.parents: dict[str, None] = {}  # in the order they were given
        self.children: set[str] = set()
        self.blacklist: dict[str, float] = {}  # parent -> until

    def __repr__(self) -> str:
        return f"<Member {self.peer_id} have={self.have_count} parents={len(self.parents)}>"

    def keep_away(self, source: str, now: float, seconds: float) -> None:
        """``source`` failed this member: not its parent again for ``seconds``. At most
        ``MAX_KEPT_AWAY`` at once (the expired go first, then the soonest to expire)."""
        self.blacklist[source] = now + seconds
        if len(self.blacklist) > MAX_KEPT_AWAY:
            for gone in [s for s, until in self.blacklist.items() if until <= now]:
                del self.blacklist[gone]
            while len(self.blacklist) > MAX_KEPT_AWAY:
                del self.blacklist[min(self.blacklist, key=self.blacklist.__getitem__)]

    def blacklisted(self, source: str, now: float) -> bool:
        until = self.blacklist.get(source)
        if until is None:
            return False
        if until <= now:
            del self.blacklist[source]
            return False
        return True


class Task:
    """One blob being distributed: what the seed holds, the members, who can serve."""

    __slots__ = (
        "capacity_sum",
        "count",
        "id",
        "incomplete",
        "members",
        "piece_size",
        "seed_children",
        "seed_id",
        "seeded",
        "sources",
    )

    def __init__(self, task_id: str, count: int, seed_id: str, piece_size: int = 0) -> None:
        self.id = task_id
        self.count = count
        self.piece_size = piece_size  # 0: unknown (claimed holdings go unchecked)
        self.seed_id = seed_id
        self.seeded = 0  # bitset of pieces the seed holds
        self.members: dict[str, Member] = {}
        self.sources = IndexedSet()  # members that serve and are not quarantined
        self.seed_children: set[str] = set()
        self.capacity_sum = 0.0  # upload capacity of the members, for the typical rate
        self.incomplete = 0

    def __repr__(self) -> str:
        return f"<Task {self.id[:20]} pieces={self.count} members={len(self.members)}>"

    def typical_capacity(self, default: float) -> float:
        return self.capacity_sum / len(self.members) if self.members else default
