"""The piece scheduler: events in, decisions out. No I/O, no clock, no asyncio.

Every method is an event (a peer joined, pieces finished, a piece failed, time advanced)
and returns the assignments it decided. The supernode's service is a thin shell that
turns HTTP calls into these events; the simulator in ``loadtest/simulate`` drives the
very same object. Time arrives as the ``now`` argument. What to fetch from where is the
``Picker``'s choice (``picker.py``); this module keeps the books it chooses from.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Sequence

from supernode.scheduler.model import (
    Assignment,
    Decisions,
    Failure,
    FailureReason,
    SchedulerConfig,
    SourceState,
    Timing,
    UnknownPeer,
    UnknownTask,
)
from supernode.scheduler.picker import Picker
from supernode.scheduler.speed import SpeedTracker
from supernode.scheduler.state import Flight, Member, Peer, Task, bits


class Scheduler:
    """Decides which peer fetches which piece from where. One writer: its owner's loop."""

    def __init__(self, config: SchedulerConfig | None = None, rng: random.Random | None = None):
        self.config = config or SchedulerConfig()
        self._rng = rng or random.Random(0)
        self._peers: dict[str, Peer] = {}
        self._tasks: dict[str, Task] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()  # peers, least recently heard first
        self._requesting: OrderedDict[str, None] = OrderedDict()  # peers with transfers, ditto
        self._freed: dict[str, None] = {}  # sources that got an upload slot back, this event
        self._waiting: dict[str, None] = {}  # tasks with parked peers
        self._flights: dict[Flight, None] = {}  # insertion order is start order
        self._quarantine: dict[str, float] = {}  # peer -> until
        self._degraded: dict[str, None] = {}  # peers in a degraded spell
        self._speed = SpeedTracker()
        self._picker = Picker(self.config, self._rng, self._peers)

    # ----------------------------------------------------------------- peers and seeds

    def add_seed(self, seed_id: str, slots: int, capacity: float | None = None) -> None:
        """A seed: a source that holds what ``piece_seeded`` says and never times out."""
        capacity = capacity or self.config.default_capacity
        self._peers[seed_id] = Peer(seed_id, None, None, slots, True, capacity)

    def peer_joined(
        self,
        peer_id: str,
        now: float,
        *,
        slots: int,
        zone: str | None = None,
        rack: str | None = None,
        capacity: float | None = None,
    ) -> Decisions:
        """A peer (re)registered. ``slots`` caps its concurrent uploads (0: it does not
        serve); ``capacity`` is its upload bytes per second. A re-registration starts
        from a clean slate."""
        decisions = self.peer_left(peer_id, now) if peer_id in self._peers else Decisions()
        capacity = capacity or self.config.default_capacity
        peer = Peer(peer_id, zone, rack, max(0, slots), False, capacity)
        if self._quarantine.get(peer_id, 0.0) > now:
            peer.state = SourceState.QUARANTINED
        peer.last_seen = now
        self._peers[peer_id] = peer
        self._seen[peer_id] = None
        return decisions

    def peer_seen(self, peer_id: str, now: float) -> None:
        """A heartbeat: the peer is alive. Raises UnknownPeer if it must re-register."""
        peer = self._peer(peer_id)
        peer.last_seen = now
        self._seen.move_to_end(peer_id)

    def peer_left(self, peer_id: str, now: float) -> Decisions:
        """The peer is gone: it is no source any more and its transfers are taken back."""
        peer = self._peers.pop(peer_id, None)
        decisions = Decisions()
        if peer is None:
            return decisions
        self._seen.pop(peer_id, None)
        self._requesting.pop(peer_id, None)
        self._speed.reset(peer_id)
        touched = set(peer.tasks)
        for flight in list(peer.flights_out):
            self._release(flight)
            touched.add(flight.task)
        for task_id in peer.tasks:
            self._remove_member(self._tasks[task_id], peer)
        for task_id in touched:
            if task_id in self._tasks:
                self._wake(self._tasks[task_id], now, decisions)
        self._wake_freed(now, decisions)
        decisions.dropped.append(peer_id)
        return decisions

    # ----------------------------------------------------------------------- tasks

    def add_task(self, task_id: str, count: int, seed_id: str, piece_size: int = 4 << 20) -> None:
        if seed_id not in self._peers or not self._peers[seed_id].is_seed:
            raise KeyError(f"unknown seed {seed_id!r}")
        if task_id not in self._tasks:
            task = self._tasks[task_id] = Task(task_id, count, seed_id, piece_size)
            task.supply = self._peers[seed_id].cap(piece_size, self.config.piece_pace)

    def remove_task(self, task_id: str) -> list[str]:
        """Forget a task; returns the peers that were waiting on it."""
        task = self._tasks.pop(task_id, None)
        if task is None:
            return []
        self._waiting.pop(task_id, None)
        for member in task.members.values():
            for flights in member.flights.values():
                for flight in flights:
                    self._drop_flight_refs(flight)
            peer = self._peers.get(member.peer_id)
            if peer is not None:
                peer.tasks.discard(task_id)
        return list(task.waiters)

    def has_task(self, task_id: str) -> bool:
        return task_id in self._tasks

    def piece_seeded(self, task_id: str, piece: int, now: float) -> Decisions:
        """The seed now holds ``piece`` (verified)."""
        task = self._task(task_id)
        decisions = Decisions()
        if not task.seeded >> piece & 1:
            task.seeded |= 1 << piece
            self._wake(task, now, decisions)
        return decisions

    def announce(self, task_id: str, peer_id: str, pieces: list[int], now: float) -> Decisions:
        """A peer holds ``pieces`` already (resumed from disk, or re-registered)."""
        task = self._task(task_id)
        member = self._member(task, self._peer(peer_id))
        for piece in pieces:
            self._add_holding(task, member, piece)
        decisions = Decisions()
        if pieces:
            self._wake(task, now, decisions)
        return decisions

    def member_left(self, task_id: str, peer_id: str, now: float) -> Decisions:
        """The peer no longer holds or wants the task (it evicted the blob)."""
        decisions = Decisions()
        task = self._tasks.get(task_id)
        if task is None or peer_id not in task.members:
            return decisions
        peer = self._peers[peer_id]
        peer.tasks.discard(task_id)
        for flight in [f for f in peer.flights_out if f.task == task_id]:
            self._release(flight)
        self._remove_member(task, peer)
        self._wake(task, now, decisions)
        self._wake_freed(now, decisions)
        return decisions

    # ------------------------------------------------------------------------ sync

    def sync(
        self,
        task_id: str,
        peer_id: str,
        now: float,
        *,
        finished: Sequence[int] = (),
        failed: Sequence[Failure] = (),
        timings: Sequence[Timing] = (),
        uploads: int | None = None,
        want: int = 0,
        park: bool = False,
    ) -> Decisions:
        """One round trip: take the peer's reports, then give it up to ``want`` pieces.

        ``timings`` say how long finished transfers took (they find degraded sources);
        ``uploads`` is how many uploads the peer is serving now. With ``park``, a peer
        that gets nothing waits: a later event hands it work in that event's decisions.
        The caller's own batch is at ``(task_id, peer_id)``.
        """
        task = self._task(task_id)
        peer = self._peer(peer_id)
        peer.last_seen = now
        self._seen.move_to_end(peer_id)
        if peer_id in self._requesting:
            self._requesting.move_to_end(peer_id)
        if uploads is not None and uploads != peer.reported:
            peer.reported = uploads
            self._refresh_room(peer)
        member = self._member(task, peer)
        decisions = Decisions()
        for timing in timings:  # before the transfers are released: they know the load
            self._timed(member, timing, now, decisions)
        for piece in finished:
            self._add_holding(task, member, piece)
        for failure in failed:
            self._failed(task, member, failure, now, decisions)
        self._unpark(task, peer_id)
        if finished or failed:  # capacity freed: the peers that wait, with nothing in
            self._wake(task, now, decisions)  # flight, go before this busy one
        self._wake_freed(now, decisions)
        batch = self._picker.fill(task, member, peer, min(want, self.config.max_batch), now, self._start)
        if batch:
            decisions.assignments[(task_id, peer_id)] = batch
        elif park and want > 0 and member.have_count < task.count:
            task.waiters[peer_id] = want
            self._waiting[task.id] = None
        return decisions

    def unpark(self, task_id: str, peer_id: str) -> None:
        """The peer stopped waiting (its long poll ended)."""
        task = self._tasks.get(task_id)
        if task is not None:
            self._unpark(task, peer_id)

    def abandon(self, task_id: str, peer_id: str, pieces: list[int], now: float) -> Decisions:
        """Assignments that never reached the peer are taken back."""
        decisions = Decisions()
        task = self._tasks.get(task_id)
        member = task.members.get(peer_id) if task else None
        if task is None or member is None:
            return decisions
        for piece in pieces:
            for flight in list(member.flights.get(piece, ())):
                self._release(flight)
        self._wake(task, now, decisions)
        self._wake_freed(now, decisions)
        return decisions

    # ------------------------------------------------------------------------ time

    def expire(self, now: float) -> Decisions:
        """Time advanced: drop silent peers, take back overdue assignments."""
        decisions = Decisions()
        timeout = self.config.peer_timeout
        while self._seen:
            peer_id = next(iter(self._seen))
            if self._peers[peer_id].last_seen + timeout > now:
                break
            decisions.merge(self.peer_left(peer_id, now))
        touched: set[str] = set()
        while self._requesting:  # requesters gone quiet with transfers in flight
            peer = self._peers[next(iter(self._requesting))]
            if peer.last_seen + self.config.flight_silence > now:
                break
            for task_id in peer.tasks:
                member = self._tasks[task_id].members[peer.id]
                for flights in list(member.flights.values()):
                    for flight in list(flights):
                        self._release(flight)
                touched.add(task_id)
        deadline = now - self.config.assignment_timeout
        while self._flights:
            flight = next(iter(self._flights))
            if flight.started > deadline:
                break
            self._release(flight)
            touched.add(flight.task)
        for peer_id in list(self._degraded):
            peer = self._peers.get(peer_id)
            if peer is None or peer.degraded_until <= now:
                del self._degraded[peer_id]
                self._speed.reset(peer_id)
                if peer is not None and peer.state is SourceState.DEGRADED:
                    peer.state = SourceState.ACTIVE
                    touched.update(peer.tasks)
        for peer_id, until in list(self._quarantine.items()):
            if until <= now:
                del self._quarantine[peer_id]
                peer = self._peers.get(peer_id)
                if peer is not None:
                    peer.state = SourceState.ACTIVE
                    self._refresh_room(peer)
                    touched.update(peer.tasks)
        for task_id in touched:
            if task_id in self._tasks:
                self._wake(self._tasks[task_id], now, decisions)
        self._wake_freed(now, decisions)
        return decisions

    # ---------------------------------------------------------------- inspection

    def load(self, source_id: str) -> tuple[int, int]:
        """``(uploads assigned, upload slots)`` of a source."""
        peer = self._peer(source_id)
        return peer.uploads, peer.slots

    def holders(self, task_id: str, piece: int) -> set[str]:
        return set(self._task(task_id).holders[piece])

    def has(self, task_id: str, peer_id: str, piece: int) -> bool:
        member = self._task(task_id).members.get(peer_id)
        return bool(member and member.holds(piece))

    def in_flight(self, task_id: str, peer_id: str) -> dict[int, list[str]]:
        member = self._task(task_id).members.get(peer_id)
        if member is None:
            return {}
        return {p: [f.source for f in fl] for p, fl in member.flights.items()}

    def is_waiting(self, task_id: str, peer_id: str) -> bool:
        return peer_id in self._task(task_id).waiters

    def waiting(self, task_id: str) -> list[str]:
        """Parked peers of a task, next to be tried first."""
        return list(self._task(task_id).waiters)

    def state(self, peer_id: str) -> SourceState:
        return self._peer(peer_id).state

    def knows_peer(self, peer_id: str) -> bool:
        return peer_id in self._peers

    def peers(self) -> list[str]:
        return [p for p, peer in self._peers.items() if not peer.is_seed]

    # ------------------------------------------------------------------ internals

    def _peer(self, peer_id: str) -> Peer:
        try:
            return self._peers[peer_id]
        except KeyError:
            raise UnknownPeer(peer_id) from None

    def _task(self, task_id: str) -> Task:
        try:
            return self._tasks[task_id]
        except KeyError:
            raise UnknownTask(task_id) from None

    def _member(self, task: Task, peer: Peer) -> Member:
        member = task.members.get(peer.id)
        if member is None:
            member = task.members[peer.id] = Member(peer.id)
            peer.tasks.add(task.id)
            task.incomplete += task.count > 0
        return member

    def _remove_member(self, task: Task, peer: Peer) -> None:
        """Forget a peer's standing in a task: its holdings and its own transfers."""
        member = task.members.pop(peer.id)
        self._unpark(task, peer.id)
        task.incomplete -= member.have_count < task.count
        for piece in bits(member.have):
            self._set_have(task, member, piece, False, peer)
        task.roomy.discard(peer.id)
        for flights in list(member.flights.values()):
            for flight in list(flights):
                self._release(flight)

    def _add_holding(self, task: Task, member: Member, piece: int) -> None:
        if not member.holds(piece):
            self._set_have(task, member, piece, True, self._peers[member.peer_id])
        for flight in member.flights.pop(piece, ()):
            self._drop_flight_refs(flight)
        member.flight_bits &= ~(1 << piece)

    def _set_have(self, task: Task, member: Member, piece: int, have: bool, peer: Peer) -> None:
        """The one place a holding changes: holders, counts, the task's supply and demand."""
        cap = peer.cap(task.piece_size, self.config.piece_pace)
        bit = 1 << piece
        if have:
            member.have |= bit
            member.have_count += 1
            task.holders[piece].add(member.peer_id)
            task.held[piece] += 1
            task.held_bits |= bit
            task.incomplete -= member.have_count == task.count
            if member.have_count == 1:
                task.supply += cap
                self._refresh_room(peer, task)
        else:
            task.incomplete += member.have_count == task.count
            member.have &= ~bit
            member.have_count -= 1
            task.holders[piece].discard(member.peer_id)
            task.held[piece] -= 1
            if not task.held[piece]:
                task.held_bits &= ~bit
            if member.have_count == 0:
                task.supply -= cap
                self._refresh_room(peer, task)

    def _refresh_room(self, peer: Peer, only: Task | None = None) -> None:
        """Keep ``Task.roomy`` true: members holding a piece, usable, with room."""
        pace = self.config.piece_pace
        for task in (only,) if only else (self._tasks.get(t) for t in peer.tasks):
            if task is None:
                continue
            member = task.members.get(peer.id)
            usable = member is not None and member.have_count and peer.state is not SourceState.QUARANTINED
            if usable and peer.has_room(task.piece_size, pace):
                task.roomy.add(peer.id)
            else:
                task.roomy.discard(peer.id)

    def _timed(self, member: Member, timing: Timing, now: float, decisions: Decisions) -> None:
        """A transfer's duration, per upload the source was serving: its pace as a source."""
        source = self._peers.get(timing.source)
        flight = next((f for f in member.flights.get(timing.piece, ()) if f.source == timing.source), None)
        if source is None or source.is_seed or flight is None:
            return
        # Concurrency during the transfer: at least what it was at the start or is now.
        self._speed.report(timing.source, timing.size, timing.seconds / max(flight.load, source.load))
        if source.state is SourceState.ACTIVE and self._speed.degraded(timing.source):
            source.state = SourceState.DEGRADED
            source.degraded_until = now + self.config.degraded_seconds
            self._degraded[source.id] = None
            decisions.degraded.append(source.id)

    def _failed(self, task: Task, member: Member, failure: Failure, now: float, decisions: Decisions) -> None:
        for flight in list(member.flights.get(failure.piece, ())):
            if flight.source == failure.source:
                self._release(flight)
        source = self._peers.get(failure.source)
        if source is None or source.id == member.peer_id:
            return
        reason = failure.reason
        if reason is FailureReason.MISSING:
            holder = task.members.get(source.id)
            if holder is not None and holder.holds(failure.piece):
                self._set_have(task, holder, failure.piece, False, source)
        elif reason is FailureReason.CORRUPT and not source.is_seed:
            self._quarantine[source.id] = now + self.config.quarantine_seconds
            if source.state is not SourceState.QUARANTINED:
                source.state = SourceState.QUARANTINED
                self._refresh_room(source)
                decisions.quarantined.append(source.id)
        elif reason is FailureReason.BUSY:
            member.blacklist[source.id] = now + self.config.busy_backoff
        else:
            member.blacklist[source.id] = now + self.config.blacklist_seconds
            if reason in (FailureReason.UNREACHABLE, FailureReason.TIMEOUT) and not source.is_seed:
                window = now - self.config.blacklist_seconds
                source.unreachable = {r: t for r, t in source.unreachable.items() if t > window}
                source.unreachable[member.peer_id] = now
                if len(source.unreachable) >= self.config.drop_after_unreachable:
                    decisions.merge(self.peer_left(source.id, now))

    def _start(self, task: Task, member: Member, piece: int, source: Peer, now: float) -> Assignment:
        flight = Flight(task.id, piece, member.peer_id, source.id, now, source.load + 1)
        member.flights.setdefault(piece, []).append(flight)
        member.flight_bits |= 1 << piece
        task.inflight[piece] += 1
        source.uploads += 1
        source.flights_out.add(flight)
        self._flights[flight] = None
        requester = self._peers[member.peer_id]
        requester.requesting += 1
        self._requesting[requester.id] = None
        if not source.is_seed:
            self._refresh_room(source)
        return Assignment(piece, source.id)

    def _release(self, flight: Flight) -> None:
        """Take back one transfer: the requester may be assigned the piece again."""
        task = self._tasks.get(flight.task)
        member = task.members.get(flight.requester) if task else None
        if member is not None:
            current = member.flights.get(flight.piece)
            if current is not None and flight in current:
                current.remove(flight)
                if not current:
                    del member.flights[flight.piece]
                    member.flight_bits &= ~(1 << flight.piece)
        self._drop_flight_refs(flight)

    def _drop_flight_refs(self, flight: Flight) -> None:
        if self._flights.pop(flight, False) is False:
            return
        task = self._tasks.get(flight.task)
        if task is not None:
            task.inflight[flight.piece] -= 1
        requester = self._peers.get(flight.requester)
        if requester is not None:
            requester.requesting -= 1
            if not requester.requesting:
                self._requesting.pop(requester.id, None)
        source = self._peers.get(flight.source)
        if source is not None:
            source.uploads -= 1
            source.flights_out.discard(flight)
            self._freed[source.id] = None
            if not source.is_seed:
                self._refresh_room(source)

    def _unpark(self, task: Task, peer_id: str) -> None:
        task.waiters.pop(peer_id, None)
        if not task.waiters:
            self._waiting.pop(task.id, None)

    def _wake_freed(self, now: float, decisions: Decisions) -> None:
        """Sources serve several tasks: a slot one task gave back may be what a peer
        parked on another task waits for (a seed shared by an image's layers)."""
        if not self._freed or not self._waiting:
            self._freed.clear()
            return
        tasks: dict[str, None] = {}
        for source_id in self._freed:
            source = self._peers.get(source_id)
            if source is None:
                continue
            if source.is_seed:
                tasks.update((t, None) for t in self._waiting if self._tasks[t].seed_id == source_id)
            else:
                tasks.update((t, None) for t in source.tasks if t in self._waiting)
        self._freed.clear()
        for task_id in tasks:
            self._wake(self._tasks[task_id], now, decisions)

    def _wake(self, task: Task, now: float, decisions: Decisions) -> None:
        """Hand freed capacity to waiting peers, oldest first; those left wait at the back."""
        misses = 0
        while task.waiters and misses < self.config.wake_misses:
            peer_id = next(iter(task.waiters))  # the oldest; a miss goes to the back
            want = task.waiters.pop(peer_id)
            peer = self._peers.get(peer_id)
            member = task.members.get(peer_id)
            if peer is None or member is None or member.have_count == task.count:
                continue
            batch = self._picker.fill(task, member, peer, want, now, self._start)
            if batch:
                decisions.assignments.setdefault((task.id, peer_id), []).extend(batch)
            else:
                task.waiters[peer_id] = want
                misses += 1
        if not task.waiters:
            self._waiting.pop(task.id, None)
