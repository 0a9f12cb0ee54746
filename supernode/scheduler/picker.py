"""Choosing what a peer fetches next, and from where. Reads the state; never writes it.

For one requester, in order:
1. Fair share: it holds at most ``supply // incomplete`` transfers (at least one), where
   ``supply`` is the concurrent uploads the task's holders and seed can serve and
   ``incomplete`` the members still downloading. Without it, whoever frees a slot takes
   it straight back, and a peer that lost transfers (its source failed) stays starved;
   with it some slots are always free for those below their share. The share grows as
   peers complete, so the last ones speed up.
2. Rarest first among the pieces it lacks that someone can serve (fewest holders plus
   transfers under way), ties broken by a rotation drawn per call.
3. The source of each piece:
   - when few sources have room (the usual state of a busy swarm), straight from the
     task's set of members with room: exactly the free capacity, none missed;
   - when many do, a sample of the piece's holders (power of d choices, O(1) however
     large the swarm) finds one;
   either way same rack, then same zone, then the most bandwidth a new transfer would
   get; then the seed; then degraded peers.
4. Endgame: once its last pieces (a few) are all in flight and one has been in flight a
   while, a second source for it; the first copy to arrive wins.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator

from supernode.scheduler.model import Assignment, SchedulerConfig, SourceState
from supernode.scheduler.state import Member, Peer, Task, bits

Start = Callable[[Task, Member, int, Peer, float], Assignment]
_PIECE_SAMPLE = 16  # candidate pieces ranked per choice when there are many


def _locality(peer: Peer, source: Peer) -> int:
    if peer.zone is not None and source.zone == peer.zone:
        return 0 if peer.rack is not None and source.rack == peer.rack else 1
    return 2


class Picker:
    def __init__(self, config: SchedulerConfig, rng: random.Random, peers: dict[str, Peer]) -> None:
        self._config = config
        self._rng = rng
        self._peers = peers
        self._few = 4 * config.sample_size  # below this many roomy sources, scan them all

    def fill(
        self, task: Task, member: Member, peer: Peer, want: int, now: float, start: Start
    ) -> list[Assignment]:
        """Up to ``want`` assignments for ``peer``; ``start`` records each one."""
        batch: list[Assignment] = []
        fair = max(1, task.supply // max(1, task.incomplete))
        room = min(want, fair - len(member.flights))
        missing = task.available & ~member.have & ~member.flight_bits
        if room > 0 and missing:
            if len(task.roomy) <= self._few:
                self._from_roomy(task, member, peer, missing, room, now, start, batch)
            else:
                self._by_piece(task, member, peer, missing, room, now, start, batch)
        if len(batch) < want:
            self._endgame(task, member, peer, want, now, start, batch)
        return batch

    def source(
        self, task: Task, piece: int, member: Member, peer: Peer, now: float, exclude: tuple[str, ...]
    ) -> Peer | None:
        """The best source of ``piece`` among a sample of its holders, else the seed,
        else a degraded holder. None when every candidate is full or refused."""
        size, pace = task.piece_size, self._config.piece_pace
        best: Peer | None = None
        best_key = (3, 0.0)
        fallback: Peer | None = None
        for source_id in task.holders[piece].sample(self._rng, self._config.sample_size):
            if source_id == peer.id or source_id in exclude:
                continue
            source = self._peers[source_id]
            if source.state is SourceState.QUARANTINED or not source.has_room(size, pace):
                continue
            if member.blacklisted(source_id, now):
                continue
            if source.state is SourceState.DEGRADED:
                fallback = source
                continue
            key = (_locality(peer, source), -source.capacity / (source.load + 1))
            if key < best_key:
                best, best_key = source, key
        if best is not None:
            return best
        if task.seeded >> piece & 1 and task.seed_id not in exclude:
            seed = self._peers[task.seed_id]
            if seed.has_room(size, pace) and not member.blacklisted(seed.id, now):
                return seed
        return fallback

    # ----------------------------------------------------------------- internals

    def _rarest(self, task: Task, mask: int, first: int, exhaustive: bool = True) -> Iterator[int]:
        """The pieces of ``mask``, rarest first. With many candidates the ``first`` few
        come from a random sample of them (ranking every piece on every sync would make
        the hot path O(pieces)); the rest follow in exact order only if those run out."""
        count = task.count
        held, inflight = task.held, task.inflight
        rng = self._rng.random
        tried: set[int] = set()
        if mask.bit_count() > 2 * _PIECE_SAMPLE:
            probes = 0
            while len(tried) < _PIECE_SAMPLE and probes < 4 * _PIECE_SAMPLE:
                probes += 1
                piece = int(rng() * count)
                if mask >> piece & 1:
                    tried.add(piece)
            ranked = sorted(tried, key=lambda p: (held[p] + inflight[p], rng()))
            yield from ranked[:first]
            if not exhaustive:
                return
            tried = set(ranked[:first])
        offset = int(rng() * count)
        keyed = [
            ((held[p] + inflight[p]) * count + (p - offset) % count, p) for p in bits(mask) if p not in tried
        ]
        keyed.sort()
        yield from (p for _, p in keyed)

    def _by_piece(
        self, task: Task, member: Member, peer: Peer, missing: int, room: int, now: float,
        start: Start, batch: list[Assignment],
    ) -> None:  # fmt: skip
        taken = 0
        for tried, piece in enumerate(self._rarest(task, missing, 2 * room + 2, exhaustive=False), 1):
            source = self.source(task, piece, member, peer, now, ())
            if source is not None:
                batch.append(start(task, member, piece, source, now))
                taken += 1
                if taken >= room:
                    return
            if tried >= 2 * room + 2:
                break
        # The holders of the rarest pieces are full: look from the side of a sample of the
        # sources with room instead (scanning every piece would make a sync O(pieces)).
        missing = task.available & ~member.have & ~member.flight_bits
        if missing:
            roomy = task.roomy.sample(self._rng, self._few)
            self._from_roomy(task, member, peer, missing, room - taken, now, start, batch, roomy)

    def _from_roomy(
        self, task: Task, member: Member, peer: Peer, missing: int, room: int, now: float,
        start: Start, batch: list[Assignment], roomy: Iterable[str] | None = None,
    ) -> None:  # fmt: skip
        healthy: list[tuple[Peer, int]] = []
        degraded: list[tuple[Peer, int]] = []
        union = 0
        for source_id in task.roomy if roomy is None else roomy:
            if source_id == peer.id or member.blacklisted(source_id, now):
                continue
            useful = task.members[source_id].have & missing
            if useful:
                source = self._peers[source_id]
                (degraded if source.state is SourceState.DEGRADED else healthy).append((source, useful))
                union |= useful
        seed = self._peers[task.seed_id]
        size, pace = task.piece_size, self._config.piece_pace
        seed_useful = 0
        if seed.has_room(size, pace) and not member.blacklisted(seed.id, now):
            seed_useful = task.seeded & missing
        candidates = union | seed_useful
        taken = 0
        for piece in self._rarest(task, candidates, room + 2) if candidates else ():
            bit = 1 << piece
            source = self._best(healthy, bit, peer, size, pace)
            if source is None and seed_useful & bit and seed.has_room(size, pace):
                source = seed
            if source is None:
                source = self._best(degraded, bit, peer, size, pace)
            if source is not None:
                batch.append(start(task, member, piece, source, now))
                taken += 1
                if taken >= room:
                    return

    def _best(
        self, sources: list[tuple[Peer, int]], bit: int, peer: Peer, size: int, pace: float
    ) -> Peer | None:
        best: Peer | None = None
        best_key = (3, 0.0)
        for source, useful in sources:
            if useful & bit and source.has_room(size, pace):
                key = (_locality(peer, source), -source.capacity / (source.load + 1))
                if key < best_key:
                    best, best_key = source, key
        return best

    def _endgame(
        self, task: Task, member: Member, peer: Peer, want: int, now: float, start: Start,
        batch: list[Assignment],
    ) -> None:  # fmt: skip
        flights = member.flights
        if not flights or member.have_count + len(flights) != task.count:
            return
        if len(flights) > self._config.endgame_pieces:
            return
        for piece, current in list(flights.items()):
            if len(batch) >= want:
                return
            if len(current) > 1 or now - current[0].started < self._config.endgame_delay:
                continue
            exclude = tuple(f.source for f in current)
            source = self.source(task, piece, member, peer, now, exclude)
            if source is not None:
                batch.append(start(task, member, piece, source, now))
