"""Opening tasks: a peer's opens (``open_tasks``) and the preheat's reads (``seed_blob``).

A task is claimed first: its lease taken (``NotOwner`` names the replica that holds
it), then created, or taken over from what an earlier owner left. Concurrent opens of
one task wait for the first one's claim; this is the one writer of those claims. An
open then waits for the upstream's first answer (the blob's geometry), proves the
opener's pull rights for a private blob (``CapabilityDesk``) and makes it a member.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace

from supernode.capabilities import CapabilityDesk
from supernode.cluster import ClusterState
from supernode.config import SupernodeConfig
from supernode.membership import Membership
from supernode.new_tasks import NewTaskBudget
from supernode.presence import Presence
from supernode.scheduler import Scheduler
from supernode.seed_task import SeedTask, ShuttingDown, Source, TaskFailed, TaskState
from supernode.seeding import Seeding
from swarmpull.core.bitfield import BitfieldError, from_text
from swarmpull.core.clock import Clock
from swarmpull.core.digest import Digest
from swarmpull.core.events import NO_EVENTS, EventSink
from swarmpull.core.protocol import OpenTask, TaskInfo, parse_peer_registration
from swarmpull.core.tasks import redact_url, task_id_for
from swarmpull.edges.store import StoredBlob


class Opening:
    def __init__(
        self,
        config: SupernodeConfig,
        seeding: Seeding,
        scheduler: Scheduler,
        cluster: ClusterState,
        presence: Presence,
        membership: Membership,
        capabilities: CapabilityDesk,
        clock: Clock,
        stopping: Callable[[], bool],
        events: EventSink = NO_EVENTS,
    ) -> None:
        self._config = config
        self._seeding = seeding
        self._scheduler = scheduler
        self._cluster = cluster
        self._presence = presence
        self._membership = membership
        self._capabilities = capabilities
        self._clock = clock
        self._stopping = stopping
        self._events = events
        self._claims: dict[str, asyncio.Future[None]] = {}
        self._budget = NewTaskBudget()

    def __repr__(self) -> str:
        return f"<Opening claims={len(self._claims)}>"

    async def open_tasks(self, peer_id: str, requests: list[OpenTask]) -> list[TaskInfo | Exception]:
        """Create or join each task; waits until their geometry is known."""
        if self._stopping():
            raise ShuttingDown()
        await self._presence.ensure(peer_id)
        if len(requests) == 1 or all(self._at_hand(r) for r in requests):
            # Nothing to wait for (one task, or every task's geometry known and its blob
            # public): one after another, no asyncio task spawned for each (the usual case
            # in a surge, where an image's layers are opened together by every node).
            opened: list[tuple[SeedTask, TaskInfo] | BaseException] = []
            for request in requests:
                try:
                    opened.append(await self._open(request))
                except Exception as exc:
                    opened.append(exc)
        else:
            opened = await asyncio.gather(*(self._open(r) for r in requests), return_exceptions=True)
        joined = [r[0] for r in opened if isinstance(r, tuple)]
        capabilities = self._capabilities.grant(peer_id, joined) if joined else {}
        answers: list[TaskInfo | Exception] = []
        for result in opened:
            if isinstance(result, tuple):
                task, info = result  # its keys named with the capability, by the same signer
                answers.append(replace(info, keys=self._seeding.keys(task), capability=capabilities[task.id]))
            elif isinstance(result, Exception):
                answers.append(result)
            else:
                raise result  # cancelled, or the process is ending
        return answers

    async def seed_blob(self, url: str, digest: Digest, headers: dict[str, str]) -> SeedTask:
        """A blob read whole into the seed, as a first pull would read it (preheat):
        the task once SEEDED with its blob complete; TaskFailed otherwise."""
        if self._stopping():
            raise ShuttingDown()
        task = await self._claim(OpenTask("preheat", url, digest), Source(url, dict(headers)), budgeted=False)
        while task.state in (TaskState.PENDING, TaskState.RUNNING):
            if task.fetch is not None and not task.fetch.done():
                await asyncio.wait([task.fetch])
            else:
                await asyncio.sleep(self._config.tick_interval)
        if task.state is not TaskState.SEEDED or task.blob is None or not task.blob.complete:
            raise TaskFailed(task.error or f"the seed could not read {task.id} whole", task.error_status)
        return task

    def _at_hand(self, req: OpenTask) -> bool:
        """An open of ``req`` waits for nothing: its task is owned here, its geometry
        known, its blob public (no pull-rights check to make)."""
        task = self._seeding.owned(task_id_for(req.url, req.digest))
        return task is not None and task.ready.done() and task.public is True

    async def _open(self, req: OpenTask) -> tuple[SeedTask, TaskInfo]:
        """The task, joined, and its answer but for its keys and capability
        (``open_tasks`` signs those of one open together)."""
        source = Source(req.url, dict(req.headers))
        task = await self._claim(req, source)
        await asyncio.shield(task.ready)
        self._unless_failed(task)
        # Pull rights before membership: a private blob's opener proves its own (PullDenied).
        await self._capabilities.check(task, source, req.peer_id)
        blob = self._unless_failed(task)  # it may have failed while the check waited
        try:
            have = from_text(req.have, blob.geometry.count) if req.have else 0
        except BitfieldError:
            have = 0  # held in another geometry: it starts afresh
        parents = self._membership.join(task, req.peer_id, have)
        self._events.emit("parents_assigned", task=task.id, peer=req.peer_id, parents=[p.id for p in parents])
        info = TaskInfo(
            task.id,
            blob.meta.size,
            blob.meta.piece_size,
            task.digest,
            parents=self._presence.reach(parents),
            report_in=self._membership.report_in(task),
        )
        return task, info

    def _unless_failed(self, task: SeedTask) -> StoredBlob:
        """The task's blob; TaskFailed (and maybe a direct read granted) if it failed."""
        if task.state is TaskState.FAILED or task.blob is None:
            direct = task.retryable and task.direct_granted < self._config.direct_per_task
            task.direct_granted += direct
            raise TaskFailed(task.error or "task failed", task.error_status, direct, task.refused)
        return task.blob

    async def _claim(self, req: OpenTask, source: Source, budgeted: bool = True) -> SeedTask:
        """The task ``req`` opens with ``source``, owned here, its read resumed if it had
        stopped. ``budgeted``: a task this replica does not hold yet counts against the
        opener's ``NewTaskBudget`` (TooManyTasks); a preheat, the operator's, does not."""
        task_id = task_id_for(req.url, req.digest)
        self._seeding.check_source(task_id, source)
        if budgeted and self._seeding.owned(task_id) is None and task_id not in self._claims:
            self._budget.take(req.peer_id, self._clock.monotonic())
        task = await self._lease(task_id, source, req)
        task.used_at = self._clock.monotonic()
        if task.state is TaskState.PARTIAL:
            task.sources = [source]
            self._seeding.start_fetch(task)
        return task

    async def _lease(self, task_id: str, source: Source, req: OpenTask) -> SeedTask:
        """The task, owned here: its lease taken (NotOwner names the replica that holds
        it), and what an earlier owner left taken over."""
        while True:
            task = self._seeding.owned(task_id)
            if task is not None:
                expired = self._clock.monotonic() - task.failed_at >= self._config.failed_task_ttl
                if task.state is TaskState.FAILED and expired:
                    self._seeding.drop(task, "its failure expired")
                    continue
                task.add_source(source)
                return task
            pending = self._claims.get(task_id)
            if pending is not None:  # another request is claiming it: wait, then look again
                await asyncio.shield(pending)
                continue
            self._claims[task_id] = asyncio.get_running_loop().create_future()
            try:
                lease = await self._cluster.claim(task_id)
                record = await self._cluster.load(task_id)
                url, digest = redact_url(req.url), str(req.digest) if req.digest else None
                self._events.emit("task_opened", task=task_id, url=url, digest=digest, takeover=bool(record))
                if record is None:
                    return self._seeding.create(task_id, source, req.digest, lease)
                holders = await self._live_holders(record.holders, record.piece_size, record.size)
                return self._seeding.take_over(task_id, source, req.digest, lease, record, holders)
            finally:
                self._claims.pop(task_id).set_result(None)

    async def _live_holders(self, holders: dict[str, str], piece_size: int, size: int) -> dict[str, int]:
        """The holders an earlier owner recorded that still heartbeat, made known here."""
        seen = await self._cluster.last_seen(list(holders))
        fresh = time.time() - self._scheduler.peer_timeout
        live = [p for p, t in seen.items() if t >= fresh]
        for peer_id, raw in (await self._cluster.get_peers(live)).items():
            if not self._scheduler.knows_peer(peer_id):
                self._presence.join(parse_peer_registration(raw))
        count = -(-size // piece_size)
        out = {}
        for peer_id in live:
            if self._scheduler.knows_peer(peer_id):
                try:
                    out[peer_id] = from_text(holders[peer_id], count)
                except BitfieldError:
                    continue
        return out
