"""A peer's reports: what it holds of each task, how its parents served it, the tasks it
dropped; each answered with its parents, the task's state and when to report next.

An empty report is a heartbeat. A report on a task another replica owns answers
``NotOwner`` (the peer calls the owner), one on a task nobody owns ``UnknownTask`` (the
peer opens it again). The one writer of the traffic the dashboard shows.
"""

from __future__ import annotations

from collections.abc import Callable

from supernode.capabilities import CapabilityDesk
from supernode.cluster import ClusterState, ClusterUnavailable, NotOwner
from supernode.config import SupernodeConfig
from supernode.dashboard.traffic import Traffic
from supernode.membership import Membership
from supernode.metrics import SupernodeMetrics
from supernode.presence import Presence
from supernode.scheduler import ParentReport, Scheduler, UnknownTask
from supernode.seed_task import ShuttingDown, TaskState
from supernode.seeding import Seeding
from swarmpull.core.bitfield import BitfieldError, from_text
from swarmpull.core.events import NO_EVENTS, EventSink
from swarmpull.core.fields import ProtocolError
from swarmpull.core.protocol import PeerReport, ReportAnswer, TaskReport


class Reports:
    def __init__(
        self,
        config: SupernodeConfig,
        seeding: Seeding,
        scheduler: Scheduler,
        cluster: ClusterState,
        presence: Presence,
        membership: Membership,
        capabilities: CapabilityDesk,
        monotonic: Callable[[], float],
        metrics: SupernodeMetrics,
        stopping: Callable[[], bool],
        events: EventSink = NO_EVENTS,
    ) -> None:
        self._seeding = seeding
        self._scheduler = scheduler
        self._cluster = cluster
        self._presence = presence
        self._membership = membership
        self._capabilities = capabilities
        self._monotonic = monotonic
        self._metrics = metrics
        self._stopping = stopping
        self._events = events
        self.traffic = Traffic(config.seed_id)  # what reports say moved, for the dashboard

    async def report(self, peer_id: str, report: PeerReport) -> dict[str, ReportAnswer | Exception]:
        """A peer's report on every task it downloads (an empty one is a heartbeat)."""
        if self._stopping():
            raise ShuttingDown()
        await self._presence.ensure(peer_id)
        self._presence.seen(peer_id)
        if report.dropped_tasks:
            await self._cluster.post(
                [
                    (t, {"peer": peer_id, "dropped": True})
                    for t in report.dropped_tasks
                    if not self._seeding.owned(t)
                ]
            )
            for task_id in report.dropped_tasks:
                self._membership.member_left(task_id, peer_id)
        answers: dict[str, ReportAnswer | Exception] = {}
        for task_report in report.tasks:
            try:
                answers[task_report.task_id] = await self._task(peer_id, task_report)
            except (UnknownTask, NotOwner, ClusterUnavailable, ProtocolError) as exc:
                answers[task_report.task_id] = exc
        return answers

    def tick(self) -> None:
        """Forget the traffic of peers and tasks gone (now and then)."""
        self.traffic.tidy(self._monotonic(), self._scheduler.peers, lambda: self._seeding.tasks)

    async def _task(self, peer_id: str, report: TaskReport) -> ReportAnswer:
        task = self._seeding.owned(report.task_id)
        if task is None:
            owner = await self._cluster.owner(report.task_id)
            if owner and owner != self._cluster.url:
                raise NotOwner(report.task_id, owner)
            raise UnknownTask(report.task_id)  # the peer opens it again, here
        task.used_at = self._monotonic()
        if not self._capabilities.may_report(task, peer_id, report.capability):
            # A stranger to a private blob learns nothing of it, not even who holds it: to
            # it, the task is unknown here. A member this replica has not let in (after a
            # takeover) opens the task again, proving its pull rights.
            raise UnknownTask(task.id)
        if task.state is TaskState.FAILED or task.blob is None:
            return ReportAnswer([], "failed", self._membership.report_in(task), task.digest, task.error)
        count = task.blob.geometry.count
        try:
            have = from_text(report.have, count) if report.have else 0
        except BitfieldError as exc:
            raise ProtocolError(f"'have': {exc}") from None
        have = task.vouched(have)
        stats = [ParentReport(p.id, p.bytes, p.seconds, p.failures, p.reason) for p in report.parents]
        for stat in report.parents:
            if stat.failures and stat.reason is not None:
                self._metrics.failures.labels(stat.reason.value).inc()
        # Only bytes from peers and seeds this replica knows: a made-up parent id would be
        # a row for ever (a report names 64 parents for each of 256 tasks).
        known = self._scheduler.knows_peer
        self.traffic.reported(
            task.id, peer_id, [p for p in report.parents if known(p.id) or self._scheduler.is_seed(p.id)]
        )
        before = self._scheduler.parents_of(task.id, peer_id) if self._events.enabled else None
        parents, events = self._scheduler.report(
            task.id,
            peer_id,
            self._monotonic(),
            have=have,
            parents=stats,
            drop=report.drop,
            bad=report.bad,
        )
        self._presence.log_events(events)
        self._membership.check(events.checks)  # accused of corruption, or claiming too much
        if before is not None and before != parents:
            self._events.emit("parents_assigned", task=task.id, peer=peer_id, parents=[p.id for p in parents])
        self._metrics.reports.inc()
        self._seeding.holds(task, peer_id, report.have, have)
        state = "seeded" if task.state is TaskState.SEEDED else "running"
        # The keys came with the open; only a takeover adds any (an earlier owner's).
        keys = self._seeding.keys(task) if task.keys else []
        capability = self._capabilities.renew(task, peer_id, report.capability)
        return ReportAnswer(
            self._presence.reach(parents),
            state,
            self._membership.report_in(task),
            task.digest,
            None,
            keys,
            capability,
        )
