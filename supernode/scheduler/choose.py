"""Choosing a requester's parents. Reads the scheduler's state; never writes it.

For one requester that needs ``want`` more parents:
1. A random sample of the task's sources (``candidates``, all of them when fewer): the
   choice costs the same in a swarm of ten nodes or of a hundred thousand.
2. Skipped: the requester itself and its current parents, sources not active (degraded or
   quarantined), sources it dropped recently, sources with no room for another child.
3. Scored: what it holds that the requester lacks (as a share of what the requester
   still needs), its free room for children, and locality (same rack, then same zone);
   the best ``want`` win. Load counts from the moment of the choice, so a burst of
   requesters spreads over the swarm instead of piling onto the best-looking source.
4. The seed comes on top while it has room: it is where a piece no peer holds yet comes
   from, and its own rate caps what it serves. Requesters ask it last (the peer's policy).

Room for children: at the swarm's typical upload rate a source takes
``children_per_parent * parents`` children per task, more or fewer in proportion to
its declared upload rate: with every node downloading from ``parents`` sources, that is
enough room for everyone with a margin.
"""

from __future__ import annotations

import math
import random

from supernode.scheduler.model import SchedulerConfig, SourceState
from supernode.scheduler.state import Member, Peer, Task

_PROGRESS, _ROOM, _LOCALITY = 0.45, 0.35, 0.20


def child_cap(source: Peer, typical: float, config: SchedulerConfig) -> int:
    """Children a source takes per task."""
    share = source.capacity / typical if typical > 0 else 1.0
    return max(1, math.ceil(config.children_per_parent * config.parents * share))


def seed_cap(seed: Peer, typical: float, config: SchedulerConfig) -> int:
    return min(config.seed_children, child_cap(seed, typical, config))


def locality(requester: Peer, source: Peer) -> float:
    if requester.zone is None or source.zone != requester.zone:
        return 0.0
    return 1.0 if requester.rack is not None and source.rack == requester.rack else 0.5


def choose_parents(
    task: Task,
    member: Member,
    requester: Peer,
    want: int,
    peers: dict[str, Peer],
    config: SchedulerConfig,
    rng: random.Random,
    now: float,
) -> list[str]:
    """Up to ``want`` new peer parents for ``member``, best first."""
    if want <= 0:
        return []
    typical = task.typical_capacity(config.default_capacity)
    per_capacity = config.children_per_parent * config.parents / typical if typical > 0 else 0.0
    needed = max(1, task.count - member.have_count)
    lacking = ~member.have
    zone, rack = requester.zone, requester.rack
    parents, blacklist, members = member.parents, member.blacklist, task.members
    active = SourceState.ACTIVE
    scored: list[tuple[float, str]] = []
    for source_id in task.sources.sample(rng, config.candidates + len(parents) + 1):
        if source_id == member.peer_id or source_id in parents:
            continue
        source = peers[source_id]
        if source.state is not active or (blacklist and member.blacklisted(source_id, now)):
            continue
        holder = members[source_id]
        cap = max(1, math.ceil(per_capacity * source.capacity)) if per_capacity else 1
        children = len(holder.children)
        if children >= cap:
            continue
        local = 0.0
        if zone is not None and source.zone == zone:
            local = 1.0 if rack is not None and source.rack == rack else 0.5
        score = (
            _PROGRESS * min(1.0, (holder.have & lacking).bit_count() / needed)
            + _ROOM * (1.0 - children / cap)
            + _LOCALITY * local
            + 1e-6 * rng.random()  # ties: no source is always first
        )
        scored.append((score, source_id))
    scored.sort(reverse=True)
    return [source_id for _, source_id in scored[:want]]


def wants_seed(task: Task, member: Member, seed: Peer, config: SchedulerConfig, now: float) -> bool:
    """Whether the seed should be one of ``member``'s parents now."""
    if member.done or member.peer_id in task.seed_children or member.blacklisted(seed.id, now):
        return False
    if not (task.seeded & ~member.have) and task.seeded.bit_count() == task.count:
        return False  # the seed holds nothing it lacks, and never will
    typical = task.typical_capacity(config.default_capacity)
    return len(task.seed_children) < seed_cap(seed, typical, config)
