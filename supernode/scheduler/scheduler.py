"""The parent scheduler: events in, decisions out. No I/O, no clock, no asyncio.

The supernode does not hand out pieces. It chooses each requester's parents (a few peers,
and the seed while it has room), and the requester picks pieces among them itself, from
the piece maps the parents send it (``peer.policy``). A requester talks to the supernode
when it opens a task, when it needs parents, when it completes, and to report its
holdings and what it saw of its parents every so often: the supernode's work grows with
the nodes, not with nodes x pieces.

Every method is an event and takes ``now``; the supernode's service is a thin shell that
turns HTTP calls into these events, and the load-test simulator drives this very object.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Sequence

from supernode.scheduler.choose import choose_parents, wants_seed
from supernode.scheduler.model import (
    Check,
    CheckKind,
    Events,
    Parent,
    ParentReport,
    SchedulerConfig,
    SeedId,
    SourceState,
    UnknownPeer,
    UnknownTask,
)
from supernode.scheduler.speed import SpeedTracker
from supernode.scheduler.standing import Standing
from supernode.scheduler.state import Member, Peer, Task
from swarmpull.core.bitfield import full
from swarmpull.core.failures import FailureReason

# Failures that count as evidence against a source (with a second witness, or the
# supernode's own check for a corrupt piece); ``missing``, ``busy`` and ``error`` do not.
_WITNESSED = (FailureReason.CORRUPT, FailureReason.UNREACHABLE, FailureReason.TIMEOUT, FailureReason.SLOW)


class Scheduler:
    """Chooses parents. One writer: its owner's event loop."""

    def __init__(self, config: SchedulerConfig | None = None, rng: random.Random | None = None):
        self.config = config or SchedulerConfig()
        self._rng = rng or random.Random(0)
        self._peers: dict[str, Peer] = {}
        self._tasks: dict[str, Task] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()  # peers, least recently heard first
        self._quarantine: dict[str, float] = {}  # peer -> until; survives re-registration
        self._degraded: dict[str, None] = {}
        self._checks: dict[str, float] = {}  # source -> when its check is given up on
        self._claim_checks: list[Check] = []  # holdings to check, from opens (take_checks)
        self._standing = Standing(self.config.standing)
        self._speed = SpeedTracker(witnesses=self.config.failure_witnesses)
        self.peer_timeout = self.config.peer_timeout  # the service stretches it with the swarm

    # ------------------------------------------------------------------- peers

    def add_seed(self, seed_id: str, capacity: float | None = None) -> None:
        """A seed: the source of last resort of every task it is named for."""
        self._peers[seed_id] = Peer(seed_id, None, None, True, capacity or self.config.default_capacity, True)

    def peer_joined(
        self,
        peer_id: str,
        now: float,
        *,
        serves: bool,
        zone: str | None = None,
        rack: str | None = None,
        capacity: float | None = None,
    ) -> Events:
        """A peer (re)registered; ``serves``: others can fetch from it. A re-registration
        starts its tasks afresh; a quarantine, a degraded spell and what requesters said
        of it stay. SeedId for a seed's id."""
        known = self._peers.get(peer_id)
        if known is not None and known.is_seed:
            raise SeedId(peer_id)
        events = self.peer_left(peer_id, now) if known is not None else Events()
        peer = Peer(peer_id, zone, rack, serves, capacity or self.config.default_capacity, False)
        if known is not None:  # what others said of it stays: registering again wipes none of it
            peer.corrupt, peer.failures = known.corrupt, known.failures
            peer.checked_at, peer.check_until = known.checked_at, known.check_until
            peer.cleared_until, peer.deferred = known.cleared_until, known.deferred
            if known.state is SourceState.DEGRADED and known.degraded_until > now:
                peer.state, peer.degraded_until = SourceState.DEGRADED, known.degraded_until
                self._degraded[peer_id] = None
        if self._quarantine.get(peer_id, 0.0) > now:
            peer.state = SourceState.QUARANTINED
        peer.last_seen = now
        self._peers[peer_id] = peer
        self._seen[peer_id] = None
        return events

    def peer_seen(self, peer_id: str, now: float) -> None:
        """A heartbeat. Raises UnknownPeer if it must register again."""
        self._touch(self._peer(peer_id), now)

    def peer_left(self, peer_id: str, now: float) -> Events:
        """The peer is gone: it is nobody's parent any more, and has no standing anywhere
        (a seed never leaves: a peer may not take its id)."""
        peer = self._peers.get(peer_id)
        events = Events()
        if peer is None or peer.is_seed:
            return events
        del self._peers[peer_id]
        self._seen.pop(peer_id, None)
        self._speed.reset(peer_id)
        self._degraded.pop(peer_id, None)
        for task_id in list(peer.tasks):
            self._remove_member(self._tasks[task_id], peer_id)
        events.dropped.append(peer_id)
        return events

    def is_seed(self, peer_id: str) -> bool:
        peer = self._peers.get(peer_id)
        return peer is not None and peer.is_seed

    def knows_peer(self, peer_id: str) -> bool:
        """A registered peer (a seed is none)."""
        peer = self._peers.get(peer_id)
        return peer is not None and not peer.is_seed

    def peers(self) -> list[str]:
        return [p for p, peer in self._peers.items() if not peer.is_seed]

    def peer_count(self) -> int:
        return len(self._seen)

    def state(self, peer_id: str) -> SourceState:
        return self._peer(peer_id).state

    # ------------------------------------------------------------------- tasks

    def add_task(self, task_id: str, count: int, seed_id: str, piece_size: int = 0) -> None:
        """A task of ``count`` pieces; with ``piece_size``, members' claimed holdings are
        checked when they grow faster than ``claim_rate``."""
        seed = self._peers.get(seed_id)
        if seed is None or not seed.is_seed:
            raise KeyError(f"unknown seed {seed_id!r}")
        if task_id not in self._tasks:
            self._tasks[task_id] = Task(task_id, count, seed_id, piece_size)

    def remove_task(self, task_id: str) -> None:
        task = self._tasks.pop(task_id, None)
        if task is None:
            return
        for peer_id in task.members:
            peer = self._peers.get(peer_id)
            if peer is not None:
                peer.tasks.discard(task_id)

    def has_task(self, task_id: str) -> bool:
        return task_id in self._tasks

    def members(self, task_id: str) -> int:
        task = self._tasks.get(task_id)
        return len(task.members) if task is not None else 0

    def holders(
        self, task_id: str, piece: int, requester: str | None = None, now: float = 0.0, limit: int = 0
    ) -> int:
        """Live members that hold ``piece`` (as last reported); with ``requester``, those
        it has not dropped as bad (a holder that refuses it everything is none for it).
        With ``limit``, counting stops there (the seed's ration asks "at least this many?"
        for every request it answers, and a task may have 10,000 members)."""
        task = self._tasks.get(task_id)
        if task is None:
            return 0
        asking = task.members.get(requester) if requester is not None else None
        bit, peers, active = 1 << piece, self._peers, SourceState.ACTIVE
        count = 0
        for peer_id, member in task.members.items():
            if member.have & bit:
                peer = peers.get(peer_id)
                if peer is not None and peer.state is active:
                    count += asking is None or not asking.blacklisted(peer_id, now)
                    if limit and count >= limit:
                        break
        return count

    def piece_seeded(self, task_id: str, piece: int) -> None:
        """The seed now holds ``piece`` (verified)."""
        self._task(task_id).seeded |= 1 << piece

    def join(self, task_id: str, peer_id: str, have: int, now: float) -> list[Parent]:
        """A peer opened the task holding ``have``: its parents."""
        task, peer = self._task(task_id), self._peer(peer_id)
        self._touch(peer, now)
        member = self._member(task, peer)
        # Holdings at an open are a restart's, verified by the peer, or a lie: checked.
        self._claims(task, member, peer, have, now, self._claim_checks, at_open=True)
        self._holds(task, member, have)
        return self._answer(task, member, peer, now)

    def take_checks(self) -> list[Check]:
        """The holdings checks opens asked for since the last call (``join`` answers
        parents only)."""
        checks, self._claim_checks = self._claim_checks, []
        return checks

    def report(
        self,
        task_id: str,
        peer_id: str,
        now: float,
        *,
        have: int,
        parents: Sequence[ParentReport] = (),
        drop: Sequence[str] = (),
        bad: Sequence[str] = (),
    ) -> tuple[list[Parent], Events]:
        """A requester's report: what it holds now, what it saw of its parents, parents it
        no longer wants (``drop``: nothing to give it for now; ``bad``: they failed it,
        kept from it for ``blacklist_seconds``). Answers its parents, topped up."""
        task, peer = self._task(task_id), self._peer(peer_id)
        self._touch(peer, now)
        member = self._member(task, peer)
        events = Events()
        seen: set[str] = set()
        for report in parents:
            if report.parent not in seen:  # one entry per parent: a repeat is no new witness
                seen.add(report.parent)
                self._parent_report(task, member, report, now, events)
        for parent_id in bad:
            # Only its own parents: keeping a holder away also makes it none for this
            # requester in the seed's ration (``holders``).
            if parent_id in member.parents and parent_id in self._peers:
                member.keep_away(parent_id, now, self.config.blacklist_seconds)
        for parent_id in (*drop, *bad):
            self._unlink(task, member, parent_id)
        self._claims(task, member, peer, have, now, events.checks, at_open=False)
        self._holds(task, member, have)
        return self._answer(task, member, peer, now), events

    def member_left(self, task_id: str, peer_id: str) -> None:
        """The peer no longer holds or wants the task (it evicted or failed the blob)."""
        task = self._tasks.get(task_id)
        if task is not None and peer_id in task.members:
            self._remove_member(task, peer_id)

    def parents_of(self, task_id: str, peer_id: str) -> list[Parent]:
        task = self._task(task_id)
        member = task.members.get(peer_id)
        return self._parent_list(task, member) if member else []

    def holdings(self, task_id: str) -> dict[str, int]:
        """Each member's pieces, as last reported (status pages, replica takeover)."""
        return {p: m.have for p, m in self._task(task_id).members.items()}

    # Read-only views for status pages (the dashboard): never on a hot path.

    def done_count(self, task_id: str) -> int:
        """Members of the task that hold every piece (O(1))."""
        task = self._tasks.get(task_id)
        return len(task.members) - task.incomplete if task is not None else 0

    def member_views(self, task_id: str) -> list[tuple[str, int, bool, list[str]]]:
        """Each member of the task: (peer, pieces held, done, parents). O(members)."""
        task = self._tasks.get(task_id)
        if task is None:
            return []
        return [(p, m.have_count, m.done, list(m.parents)) for p, m in task.members.items()]

    def peer_view(self, peer_id: str) -> tuple[str | None, str | None, SourceState] | None:
        """A peer's (zone, rack, state), or None if it is not registered."""
        peer = self._peers.get(peer_id)
        return (peer.zone, peer.rack, peer.state) if peer is not None else None

    def confirm_corrupt(self, source_id: str, now: float) -> Events:
        """The supernode fetched a piece from ``source_id`` itself and it did not match."""
        events = Events()
        self._checks.pop(source_id, None)
        source = self._peers.get(source_id)
        if source is not None and not source.is_seed:
            source.check_until = 0.0
            source.deferred = False
            self._quarantine_peer(source, now, events)
        return events

    def cleared(self, source_id: str, now: float) -> Events:
        """The supernode fetched a piece from ``source_id`` itself and it matched: the
        corrupt claims about it are lies, and so are those of the next ``check_interval``."""
        events = Events()
        self._checks.pop(source_id, None)
        source = self._peers.get(source_id)
        if source is None or source.is_seed:
            return events
        source.check_until = 0.0
        source.deferred = False
        source.cleared_until = now + self.config.check_interval
        for reporter in sorted(source.corrupt):
            self._disproved(reporter, source_id, now, events)
        source.corrupt.clear()
        return events

    def check_failed(self, source_id: str, now: float) -> Events:
        """The supernode could not check ``source_id`` (it did not answer, or had no piece
        to show): the witnesses decide, as without a check."""
        events = Events()
        self._checks.pop(source_id, None)
        source = self._peers.get(source_id)
        if source is not None and not source.is_seed and source.check_until:
            source.check_until = 0.0
            source.deferred = False
            if len(source.corrupt) >= self.config.corrupt_witnesses:
                self._quarantine_peer(source, now, events)
        return events

    def check_deferred(self, source_id: str, now: float) -> Events:
        """The supernode could not make its check of ``source_id`` (no room in its line,
        no verdict in time): no evidence either way. The accusations wait, and the next
        one from ``check_seconds`` on brings a new check (the witnesses do not decide
        without one: nobody can have a source quarantined by keeping the supernode from
        checking it, nor have it checked at every report)."""
        self._checks.pop(source_id, None)
        source = self._peers.get(source_id)
        if source is not None and not source.is_seed and source.check_until:
            source.check_until = 0.0
            source.deferred = True
            source.checked_at = now - self.config.check_interval + self.config.check_seconds
        return Events()

    def holdings_refuted(self, task_id: str, peer_id: str, now: float) -> Events:
        """The supernode asked ``peer_id`` for a piece it claimed and it had none: its
        holdings are not believed (it leaves the task; it opens it again when it needs
        the blob), and the lie costs it a strike."""
        events = Events()
        task = self._tasks.get(task_id)
        if task is not None and peer_id in task.members:
            self._remove_member(task, peer_id)
            self._disproved(peer_id, peer_id, now, events)
        return events

    def has_standing(self, reporter: str, now: float) -> bool:
        """Whether ``reporter``'s claims about its parents count (``standing``)."""
        return self._standing.counts(reporter, now)

    # -------------------------------------------------------------------- time

    def expire(self, now: float) -> Events:
        """Time advanced: drop silent peers, end degraded spells and quarantines."""
        events = Events()
        timeout = self.peer_timeout
        while self._seen:
            peer_id = next(iter(self._seen))
            if self._peers[peer_id].last_seen + timeout > now:
                break
            events.merge(self.peer_left(peer_id, now))
        for peer_id in list(self._degraded):
            peer = self._peers.get(peer_id)
            if peer is None or peer.degraded_until <= now:
                del self._degraded[peer_id]
                self._speed.reset(peer_id)
                if peer is not None and peer.state is SourceState.DEGRADED:
                    peer.state = SourceState.ACTIVE
        for source_id, until in list(self._checks.items()):
            if until <= now:  # no verdict in time (it waited its turn): no evidence
                events.merge(self.check_deferred(source_id, now))
        for peer_id, until in list(self._quarantine.items()):
            if until <= now:
                del self._quarantine[peer_id]
                peer = self._peers.get(peer_id)
                if peer is not None and peer.state is SourceState.QUARANTINED:
                    peer.state = SourceState.ACTIVE
                    peer.corrupt.clear()
                    self._refresh_source(peer)
        return events

    # --------------------------------------------------------------- internals

    def _peer(self, peer_id: str) -> Peer:
        """A registered peer; UnknownPeer otherwise, and for a seed's id (no peer acts as it)."""
        peer = self._peers.get(peer_id)
        if peer is None or peer.is_seed:
            raise UnknownPeer(peer_id)
        return peer

    def _task(self, task_id: str) -> Task:
        try:
            return self._tasks[task_id]
        except KeyError:
            raise UnknownTask(task_id) from None

    def _touch(self, peer: Peer, now: float) -> None:
        peer.last_seen = now
        if not peer.is_seed:
            self._seen.move_to_end(peer.id)

    def _member(self, task: Task, peer: Peer) -> Member:
        member = task.members.get(peer.id)
        if member is None:
            member = task.members[peer.id] = Member(peer.id)
            peer.tasks.add(task.id)
            task.capacity_sum += peer.capacity
            task.incomplete += 1
            if peer.serves and peer.state is not SourceState.QUARANTINED:
                task.sources.add(peer.id)
        return member

    def _remove_member(self, task: Task, peer_id: str) -> None:
        member = task.members.pop(peer_id)
        peer = self._peers.get(peer_id)
        if peer is not None:
            peer.tasks.discard(task.id)
            task.capacity_sum -= peer.capacity
        task.incomplete -= not member.done
        task.sources.discard(peer_id)
        for parent_id in list(member.parents):
            self._unlink(task, member, parent_id)
        task.seed_children.discard(peer_id)
        for child_id in member.children:  # they notice the parent is gone and ask again
            child = task.members.get(child_id)
            if child is not None:
                child.parents.pop(peer_id, None)

    def _holds(self, task: Task, member: Member, have: int) -> None:
        have &= full(task.count)
        if have & ~member.have:
            member.have |= have
            member.have_count = member.have.bit_count()
        if not member.done and member.have_count == task.count:
            member.done = True
            task.incomplete -= 1
            for parent_id in list(member.parents):  # it needs no parents any more
                self._unlink(task, member, parent_id)

    def _claims(
        self, task: Task, member: Member, peer: Peer, have: int, now: float, out: list[Check], at_open: bool
    ) -> None:
        """A member says it holds ``have``: pieces it could not have fetched since it last
        said (any, at an open; more than ``claim_rate`` allows, in a report) are checked
        at the member itself, at most once per ``check_interval``. Only a source's claims
        matter (nobody fetches from the others)."""
        new = have & full(task.count) & ~member.have
        first = member.claimed_at == -math.inf  # a report without an open is an open
        elapsed, member.claimed_at = now - member.claimed_at, now
        if not new or not task.piece_size or not peer.serves or self.config.check_seconds <= 0:
            return
        if not (at_open or first):
            possible = elapsed * self.config.claim_rate / task.piece_size + 1
            if new.bit_count() <= possible:
                return
        if member.claim_checked_at + self.config.check_interval > now:
            return
        member.claim_checked_at = now
        out.append(Check(task.id, member.peer_id, new, CheckKind.HOLDINGS))

    def _unlink(self, task: Task, member: Member, parent_id: str) -> None:
        if member.parents.pop(parent_id, False) is False:
            return
        if parent_id == task.seed_id:
            task.seed_children.discard(member.peer_id)
        else:
            parent = task.members.get(parent_id)
            if parent is not None:
                parent.children.discard(member.peer_id)

    def _answer(self, task: Task, member: Member, peer: Peer, now: float) -> list[Parent]:
        """The member's parents, topped up to ``parents`` peers (and the seed)."""
        if not member.done:
            for parent_id in [p for p in member.parents if p != task.seed_id]:
                source = self._peers.get(parent_id)
                if source is None or source.state is not SourceState.ACTIVE:
                    self._unlink(task, member, parent_id)
            current = len(member.parents) - (task.seed_id in member.parents)
            new = choose_parents(
                task, member, peer, self.config.parents - current, self._peers, self.config, self._rng, now
            )
            for parent_id in new:
                member.parents[parent_id] = None
                task.members[parent_id].children.add(member.peer_id)
            seed = self._peers[task.seed_id]
            if wants_seed(task, member, seed, self.config, now):
                member.parents[seed.id] = None
                task.seed_children.add(member.peer_id)
        return self._parent_list(task, member)

    def _parent_list(self, task: Task, member: Member) -> list[Parent]:
        return [Parent(p, p == task.seed_id) for p in member.parents]

    def _parent_report(
        self, task: Task, member: Member, report: ParentReport, now: float, events: Events
    ) -> None:
        """Counts only for a parent this requester was given: nobody can report on a
        source it was never sent to."""
        if report.parent not in member.parents or report.parent == task.seed_id:
            return
        source = self._peers.get(report.parent)
        holder = task.members.get(report.parent)
        if source is None or holder is None:
            return
        if report.bytes > 0:
            source.served_at = now
            if not report.failures and self._standing.counts(member.peer_id, now):
                # It serves this requester: others' claims that it is unreachable may be lies.
                liars, lost = self._standing.delivered(source.id, member.peer_id, now)
                for liar in liars:
                    source.failures.pop(liar, None)
                events.unheeded.extend(lost)
        if report.bytes > 0 and report.seconds > 0 and self._standing.counts(member.peer_id, now):
            # A parent shares its upload among its children: per child, it looks slower
            # the more children it has. That is load, not sickness.
            per_child = report.seconds / max(1, len(holder.children))
            self._speed.report(source.id, member.peer_id, report.bytes, per_child)
            if self._speed.degraded(source.id):
                self._degrade(source, now, events, "its transfers are far slower than its peers'")
        reason = report.reason
        if not report.failures or reason is None:
            return
        if reason not in _WITNESSED:
            return
        if not self._standing.counts(member.peer_id, now):
            return  # caught lying before: its claims are no evidence (said once, when it lost standing)
        if reason is FailureReason.CORRUPT:
            self._corrupt_claim(task, source, member.peer_id, now, events)
        else:
            window = now - self.config.blacklist_seconds
            if reason is FailureReason.TIMEOUT and source.served_at > window:
                # Transfers over their deadline at a source that still delivers to others
                # are its load (or the reporter's link), not a stall: in a rate-limited
                # surge most sources see a few, and degrading them all starves the swarm.
                # ``slow`` is another matter: measured while its bytes came (far too slow
                # for the deadline), or a head and then nothing (a source waits for its
                # upload link before it answers); an upload shared among a few slots is
                # neither, a trickling source or one promising pieces it lacks is.
                return
            source.failures = {r: t for r, t in source.failures.items() if t > window}
            source.failures[member.peer_id] = now
            if reason is FailureReason.UNREACHABLE:
                self._standing.claimed_unreachable(member.peer_id, source.id, now)
            if len(source.failures) < self.config.failure_witnesses:
                return
            if reason is FailureReason.UNREACHABLE:
                events.merge(self.peer_left(source.id, now))
            else:
                self._degrade(
                    source, now, events, f"{reason.value} transfers at {len(source.failures)} requesters"
                )

    def _degrade(self, source: Peer, now: float, events: Events, why: str) -> None:
        if source.state is SourceState.ACTIVE:
            source.state = SourceState.DEGRADED
            source.degraded_until = now + self.config.degraded_seconds
            self._degraded[source.id] = None
            events.degraded.append((source.id, why))

    def _corrupt_claim(self, task: Task, source: Peer, reporter: str, now: float, events: Events) -> None:
        """A requester with standing says ``source`` sent it a piece that did not match."""
        if source.state is SourceState.QUARANTINED:
            return
        if source.cleared_until > now:  # the supernode saw its bytes right a moment ago
            self._disproved(reporter, source.id, now, events)
            return
        source.corrupt.add(reporter)
        checks = self.config.check_seconds > 0
        if checks and not source.check_until and source.checked_at + self.config.check_interval <= now:
            source.checked_at = now
            source.check_until = now + self.config.check_seconds
            self._checks[source.id] = source.check_until
            events.checks.append(Check(task.id, source.id, task.members[source.id].have))
        if source.check_until or source.deferred:
            return  # the supernode's own check decides; the witnesses wait for it
        if len(source.corrupt) >= self.config.corrupt_witnesses:
            self._quarantine_peer(source, now, events)

    def _disproved(self, reporter: str, source_id: str, now: float, events: Events) -> None:
        if self._standing.disproved(reporter, source_id, now):
            events.unheeded.append(reporter)

    def _quarantine_peer(self, source: Peer, now: float, events: Events) -> None:
        self._quarantine[source.id] = now + self.config.quarantine_seconds
        if source.state is not SourceState.QUARANTINED:
            source.state = SourceState.QUARANTINED
            events.quarantined.append(source.id)
            self._refresh_source(source)

    def _refresh_source(self, peer: Peer) -> None:
        """Whether the peer is a source of its tasks follows its state."""
        for task_id in peer.tasks:
            task = self._tasks[task_id]
            if peer.serves and peer.state is not SourceState.QUARANTINED:
                task.sources.add(peer.id)
            else:
                task.sources.discard(peer.id)
                member = task.members[peer.id]
                for child_id in list(member.children):
                    child = task.members.get(child_id)
                    if child is not None:
                        self._unlink(task, child, peer.id)
