"""The supernode's service: turns API calls into scheduler events and answers.

The one writer of the scheduler and of the seed's tasks: HTTP handlers call into it on
the supernode's event loop, and each call runs to its first ``await`` without
interruption. It chooses no piece: a requester gets its parents and picks pieces among
them itself. What other replicas need goes through ``ClusterState``, whichever kind it
is (one supernode or several), so this module has no branch for replicas.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from supernode.capabilities import CapabilityDesk
from supernode.cluster import ClusterState, ClusterUnavailable, NotOwner
from supernode.config import SupernodeConfig
from supernode.dashboard.traffic import Traffic
from supernode.metrics import SupernodeMetrics
from supernode.pacing import report_interval
from supernode.presence import Presence
from supernode.scheduler import Check, Parent, ParentReport, Scheduler, UnknownPeer, UnknownTask
from supernode.seed_task import SeedTask, ShuttingDown, Source, TaskFailed, TaskState
from supernode.seeding import Seeding
from supernode.sync import ClusterSync
from supernode.verify import SourceChecks
from swarmpull.core.bitfield import BitfieldError, from_text, to_text
from swarmpull.core.clock import Clock
from swarmpull.core.digest import Digest
from swarmpull.core.events import NO_EVENTS, EventSink
from swarmpull.core.protocol import (
    Holding,
    OpenTask,
    ParentInfo,
    PeerRegistration,
    PeerReport,
    ProtocolError,
    ReportAnswer,
    TaskInfo,
    TaskReport,
    parse_peer_registration,
)
from swarmpull.core.signing import Signer, keys_to_json
from swarmpull.core.tasks import redact_url, task_id_for
from swarmpull.edges.store import PieceStore

log = logging.getLogger(__name__)


class SupernodeService:
    def __init__(
        self,
        config: SupernodeConfig,
        seeding: Seeding,
        scheduler: Scheduler,
        cluster: ClusterState,
        signer: Signer,
        clock: Clock,
        seed_address: str,
        metrics: SupernodeMetrics,
        events: EventSink = NO_EVENTS,
    ) -> None:
        self.config = config
        self.seeding = seeding
        self.events = events
        self.traffic = Traffic(config.seed_id)  # what reports say moved, for the dashboard
        self.scheduler = scheduler
        self.cluster = cluster
        self.metrics = metrics
        self._signer = signer
        self._clock = clock
        self._seed_address = seed_address
        self._claims: dict[str, asyncio.Future[None]] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._stopping = False
        self._rng = random.Random()
        self.presence = Presence(config, scheduler, cluster, clock.monotonic, metrics, events)
        self.capabilities = CapabilityDesk(seeding.session, config.auth_cache_ttl, clock)
        self.checks: SourceChecks | None = None  # set by whoever can fetch pieces (the server)
        self.sync = ClusterSync(
            cluster, seeding, scheduler, self, self.presence, clock.monotonic, config.tick_interval
        )

    @property
    def tasks(self) -> dict[str, SeedTask]:
        return self.seeding.tasks

    @property
    def store(self) -> PieceStore:
        return self.seeding.store

    @property
    def accepting(self) -> bool:
        """Started and not stopping: calls are served."""
        return self._ticker is not None and not self._stopping

    async def start(self) -> None:
        if not self.cluster.shared:  # with replicas, a stored blob is reused when claimed
            self.seeding.restore(await self.cluster.claim(""))
        self._ticker = asyncio.create_task(self._tick_loop(), name="supernode-tick")
        self.sync.start()

    async def stop(self) -> None:
        self._stopping = True  # from now on every call is refused
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
        if self.checks is not None:
            await self.checks.stop()
        await self.seeding.stop()
        await self.sync.stop()

    # ------------------------------------------------------------------- peers

    async def register_peer(self, reg: PeerRegistration) -> None:
        await self.cluster.put_peer(reg.peer_id, reg.to_json() | {"holdings": []})
        elsewhere = [h for h in reg.holdings if self._owned(h.task_id) is None]
        await self.cluster.post(
            [(h.task_id, {"peer": reg.peer_id, "holding": h.to_json()}) for h in elsewhere]
        )
        self.presence.join(reg)
        self.events.emit("peer_joined", peer=reg.peer_id, address=reg.address, zone=reg.zone, rack=reg.rack)
        for holding in reg.holdings:
            self.announce_holding(reg.peer_id, holding)
        log.info("peer %s joined from %s (%d holdings)", reg.peer_id, reg.address, len(reg.holdings))

    def announce_holding(self, peer_id: str, holding: Holding) -> None:
        """A peer holds pieces of a task we own (it restarted, or registered elsewhere)."""
        task = self._owned(holding.task_id)
        blob = task.blob if task else None
        if (
            task is None
            or blob is None
            or (blob.meta.size, blob.meta.piece_size) != (holding.size, holding.piece_size)
        ):
            return  # unknown here, or cut differently: its pieces cannot be vouched for
        try:
            have = from_text(holding.have, blob.geometry.count)
        except BitfieldError:
            return
        have &= self._vouched(task, have) if task.signer is None else 0  # held from a poisoned read
        self.scheduler.join(task.id, peer_id, have, self._clock.monotonic())
        self._check(self.scheduler.take_checks())
        self.seeding.holds(task, peer_id, to_text(have, blob.geometry.count), have)

    async def report(self, peer_id: str, report: PeerReport) -> dict[str, ReportAnswer | Exception]:
        """A peer's report on every task it downloads (an empty one is a heartbeat)."""
        if self._stopping:
            raise ShuttingDown()
        await self.presence.ensure(peer_id)
        self.presence.seen(peer_id)
        if report.dropped_tasks:
            await self.cluster.post(
                [(t, {"peer": peer_id, "dropped": True}) for t in report.dropped_tasks if not self._owned(t)]
            )
            for task_id in report.dropped_tasks:
                self.member_left(task_id, peer_id)
        answers: dict[str, ReportAnswer | Exception] = {}
        for task_report in report.tasks:
            try:
                answers[task_report.task_id] = await self._report(peer_id, task_report)
            except (UnknownTask, NotOwner, ClusterUnavailable, ProtocolError) as exc:
                answers[task_report.task_id] = exc
        return answers

    def member_left(self, task_id: str, peer_id: str) -> None:
        task = self._owned(task_id)
        if task is not None:
            self.seeding.left(task, peer_id)
        self.scheduler.member_left(task_id, peer_id)

    # ------------------------------------------------------------------- tasks

    async def open_tasks(self, peer_id: str, requests: list[OpenTask]) -> list[TaskInfo | Exception]:
        """Create or join each task; waits until their geometry is known."""
        if self._stopping:
            raise ShuttingDown()
        await self.presence.ensure(peer_id)
        if len(requests) == 1:  # the usual case: no task to spawn
            try:
                return [await self._open(requests[0])]
            except Exception as exc:
                return [exc]
        results = await asyncio.gather(*(self._open(r) for r in requests), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
        return list(results)  # type: ignore[arg-type]

    async def _open(self, req: OpenTask) -> TaskInfo:
        task_id = task_id_for(req.url, req.digest)
        source = Source(req.url, dict(req.headers))
        self.seeding.check_source(task_id, source)
        task = await self._claim(task_id, source, req)
        task.used_at = self._clock.monotonic()
        if task.state is TaskState.PARTIAL:
            task.sources = [source]
            self.seeding.start_fetch(task)
        await asyncio.shield(task.ready)
        if task.state is TaskState.FAILED or task.blob is None:
            direct = task.retryable and task.direct_granted < self.config.direct_per_task
            task.direct_granted += direct
            raise TaskFailed(task.error or "task failed", task.error_status, direct, task.refused)
        blob = task.blob
        # Pull rights before membership: a private blob's opener proves its own (PullDenied).
        capability = await self.capabilities.grant(task, self.seeding.signer(task), req.peer_id, source)
        try:
            have = from_text(req.have, blob.geometry.count) if req.have else 0
        except BitfieldError:
            have = 0  # held in another geometry: it starts afresh
        # A read after a poisoned one: whatever the peer held before it came from that read.
        have &= self._vouched(task, have) if task.signer is None else 0
        parents = self.scheduler.join(task_id, req.peer_id, have, self._clock.monotonic())
        self._check(self.scheduler.take_checks())
        self.events.emit("parents_assigned", task=task_id, peer=req.peer_id, parents=[p.id for p in parents])
        self.seeding.holds(task, req.peer_id, to_text(have, blob.geometry.count), have)
        return TaskInfo(
            task_id,
            blob.meta.size,
            blob.meta.piece_size,
            task.digest,
            self._keys(task),
            self._wire(parents),
            self._report_interval(task),
            capability,
        )

    async def _claim(self, task_id: str, source: Source, req: OpenTask) -> SeedTask:
        """The task, owned here: its lease taken (NotOwner names the replica that holds
        it), and what an earlier owner left taken over."""
        while True:
            task = self._owned(task_id)
            if task is not None:
                expired = self._clock.monotonic() - task.failed_at >= self.config.failed_task_ttl
                if task.state is TaskState.FAILED and expired:
                    self.seeding.drop(task, "its failure expired")
                    continue
                task.add_source(source)
                return task
            pending = self._claims.get(task_id)
            if pending is not None:  # another request is claiming it: wait, then look again
                await asyncio.shield(pending)
                continue
            self._claims[task_id] = asyncio.get_running_loop().create_future()
            try:
                lease = await self.cluster.claim(task_id)
                record = await self.cluster.load(task_id)
                url, digest = redact_url(req.url), str(req.digest) if req.digest else None
                self.events.emit("task_opened", task=task_id, url=url, digest=digest, takeover=bool(record))
                if record is None:
                    return self.seeding.create(task_id, source, req.digest, lease)
                holders = await self._live_holders(task_id, record.holders, record.piece_size, record.size)
                return self.seeding.take_over(task_id, source, req.digest, lease, record, holders)
            finally:
                self._claims.pop(task_id).set_result(None)

    async def _live_holders(
        self, task_id: str, holders: dict[str, str], piece_size: int, size: int
    ) -> dict[str, int]:
        """The holders an earlier owner recorded that still heartbeat, made known here."""
        seen = await self.cluster.last_seen(list(holders))
        fresh = time.time() - self.scheduler.peer_timeout
        live = [p for p, t in seen.items() if t >= fresh]
        for peer_id, raw in (await self.cluster.get_peers(live)).items():
            if not self.scheduler.knows_peer(peer_id):
                self.presence.join(parse_peer_registration(raw))
        count = -(-size // piece_size)
        out = {}
        for peer_id in live:
            if self.scheduler.knows_peer(peer_id):
                try:
                    out[peer_id] = from_text(holders[peer_id], count)
                except BitfieldError:
                    continue
        return out

    async def _report(self, peer_id: str, report: TaskReport) -> ReportAnswer:
        task = self._owned(report.task_id)
        if task is None:
            owner = await self.cluster.owner(report.task_id)
            if owner and owner != self.cluster.url:
                raise NotOwner(report.task_id, owner)
            raise UnknownTask(report.task_id)  # the peer opens it again, here
        task.used_at = self._clock.monotonic()
        if task.state is TaskState.FAILED or task.blob is None:
            return ReportAnswer([], "failed", self._report_interval(task), task.digest, task.error)
        count = task.blob.geometry.count
        try:
            have = from_text(report.have, count) if report.have else 0
        except BitfieldError as exc:
            raise ProtocolError(f"'have': {exc}") from None
        have &= self._vouched(task, have)
        stats = [ParentReport(p.id, p.bytes, p.seconds, p.failures, p.reason) for p in report.parents]
        for stat in report.parents:
            if stat.failures and stat.reason is not None:
                self.metrics.failures.labels(stat.reason.value).inc()
        self.traffic.reported(task.id, peer_id, report.parents)
        before = self.scheduler.parents_of(task.id, peer_id) if self.events.enabled else None
        parents, events = self.scheduler.report(
            task.id,
            peer_id,
            self._clock.monotonic(),
            have=have,
            parents=stats,
            drop=report.drop,
            bad=report.bad,
        )
        self.presence.log_events(events)
        if events.checks:  # accused of corruption, or claiming too much: look ourselves
            self._check(events.checks)
        if before is not None and before != parents:
            self.events.emit("parents_assigned", task=task.id, peer=peer_id, parents=[p.id for p in parents])
        self.metrics.reports.inc()
        self.seeding.holds(task, peer_id, report.have, have)
        state = "seeded" if task.state is TaskState.SEEDED else "running"
        # The keys came with the open; only a takeover adds any (an earlier owner's).
        keys = self._keys(task) if task.keys else []
        capability = self.capabilities.renew(task, self.seeding.signer(task), peer_id)
        return ReportAnswer(
            self._wire(parents), state, self._report_interval(task), task.digest, None, keys, capability
        )

    # ----------------------------------------------------------------- preheat

    def live_peers(self) -> dict[str, tuple[str | None, str | None]]:
        """Registered peers that still heartbeat, with their (zone, rack)."""
        return {p: self.presence.labels(p) for p in self.scheduler.peers()}

    def peer_labels(self, peer_id: str) -> tuple[str | None, str | None]:
        """A registered peer's (zone, rack); UnknownPeer if it is not registered."""
        if not self.scheduler.knows_peer(peer_id):
            raise UnknownPeer(peer_id)
        return self.presence.labels(peer_id)

    async def seed_blob(self, url: str, digest: Digest, headers: dict[str, str]) -> SeedTask:
        """A blob read whole into the seed, as a first pull would read it (preheat):
        the task once SEEDED with its blob complete; TaskFailed otherwise."""
        if self._stopping:
            raise ShuttingDown()
        task_id = task_id_for(url, digest)
        source = Source(url, dict(headers))
        self.seeding.check_source(task_id, source)
        task = await self._claim(task_id, source, OpenTask("preheat", url, digest))
        task.used_at = self._clock.monotonic()
        if task.state is TaskState.PARTIAL:
            task.sources = [source]
            self.seeding.start_fetch(task)
        while task.state in (TaskState.PENDING, TaskState.RUNNING):
            if task.fetch is not None and not task.fetch.done():
                await asyncio.wait([task.fetch])
            else:
                await asyncio.sleep(self.config.tick_interval)
        if task.state is not TaskState.SEEDED or task.blob is None or not task.blob.complete:
            raise TaskFailed(task.error or f"the seed could not read {task_id} whole", task.error_status)
        return task

    def holds_blob(self, peer_id: str, task_id: str) -> None:
        """A peer holds a whole blob it fetched another way (BitTorrent): a source for
        the HTTP swarm from now on."""
        task = self._owned(task_id)
        blob = task.blob if task else None
        if blob is None or not self.scheduler.knows_peer(peer_id):
            return
        count = blob.geometry.count
        have = (1 << count) - 1
        self.announce_holding(
            peer_id, Holding(task_id, blob.meta.size, blob.meta.piece_size, to_text(have, count))
        )

    def status(self, task_id: str) -> dict[str, object]:
        task = self.tasks.get(task_id)
        if task is None:
            raise UnknownTask(task_id)
        blob = task.blob
        return {
            "task_id": task.id,
            "state": task.state.value,
            "url": redact_url(task.url),
            "size": blob.meta.size if blob else None,
            "piece_size": blob.meta.piece_size if blob else None,
            "pieces": blob.geometry.count if blob else None,
            "pieces_seeded": blob.verified_count if blob else 0,
            "digest": str(task.digest) if task.digest else None,
            "error": task.error,
        }

    # --------------------------------------------------------------- internals

    def _owned(self, task_id: str) -> SeedTask | None:
        """The task, if this supernode may act for it (holds its lease)."""
        task = self.tasks.get(task_id)
        if task is None:
            return None
        if task.lease is None or task.lease.valid_until < self._clock.monotonic():
            self.seeding.drop(task, "its lease could not be renewed")
            return None
        return task

    def _vouched(self, task: SeedTask, have: int) -> int:
        """Of the pieces a peer says it holds, those whose sha256 we hold: only those can
        be checked by requesters."""
        blob = task.blob
        if blob is None:
            return 0
        return have & (blob.have | task.sha_mask)

    def may_have(self, task_id: str, peer_id: str) -> bool:
        """``peer_id`` may pull the blob: it is public, or its capability is live."""
        task = self.tasks.get(task_id)
        return task is not None and self.capabilities.lets_in(task, peer_id)

    def own_capability(self, task_id: str) -> str | None:
        """A capability for the supernode itself (its checks of a source's pieces)."""
        task = self.tasks.get(task_id)
        if task is None:
            return None
        return self.capabilities.own(task, self.seeding.signer(task), self.config.seed_id)

    def task_keys(self, task: SeedTask) -> list[str]:
        """The keys of a task's statements and capabilities, as answers carry them."""
        return self._keys(task)

    def _keys(self, task: SeedTask) -> list[str]:
        if task.key_list is None:
            task.key_list = sorted({*keys_to_json([self.seeding.signer(task).public_key]), *task.keys})
        return task.key_list

    def _wire(self, parents: list[Parent]) -> list[ParentInfo]:
        out = []
        for parent in parents:
            if parent.seed:
                out.append(ParentInfo(parent.id, self._seed_address, True))
                continue
            address = self.presence.address(parent.id)
            if address is not None:
                out.append(ParentInfo(parent.id, address))
        self.metrics.parents.inc(len(out))
        return out

    def _check(self, checks: list[Check]) -> None:
        if not checks:
            return
        if self.checks is not None:
            self.checks.submit(checks)
            return
        now = self._clock.monotonic()  # nobody to check with: the witnesses decide at once
        for check in checks:
            self.presence.log_events(self.scheduler.check_failed(check.source, now))

    def _report_interval(self, task: SeedTask) -> float:
        return report_interval(self.scheduler.members(task.id), self.config, self._rng.random())

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_interval)
            try:
                self.tick()
                await self.sync.tick()
                for task_id in list(self.tasks):
                    self._owned(task_id)  # drops the tasks whose lease lapsed
            except Exception:  # a bug here must not stop timeouts for good
                log.exception("supernode tick failed")

    def tick(self) -> None:
        """Time advanced: expire silent peers, old failures and idle tasks."""
        self.presence.tick()
        now = self._clock.monotonic()
        self.traffic.tidy(now, self.scheduler.peers, lambda: self.tasks)
        for task in list(self.tasks.values()):
            if task.state is TaskState.FAILED and now - task.failed_at > self.config.failed_task_ttl:
                self.seeding.drop(task, "its failure expired")
            elif now - task.used_at > self.config.task_ttl and task.state is not TaskState.RUNNING:
                self.seeding.drop(task, "idle")
