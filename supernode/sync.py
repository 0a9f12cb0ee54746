"""What a supernode shares with its replicas, kept in step: the one writer of the cluster.

Once a tick (and soon after something a successor would need was staged) it writes each
owned task's batch through, which also renews the task's lease; it records which peers
were heard here, takes as alive the peers heard at other replicas, and applies the events
other replicas received for tasks owned here (a peer announcing what it holds, or
dropping a blob). A task whose lease was taken or lapsed is dropped. With one supernode
(``LocalCluster``) every one of these is a no-op that costs nothing. (The dashboard's
views, ``sp:ui:*``, are not task state: ``supernode.dashboard.feed`` writes them.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from supernode.cluster import Batch, ClusterState, ClusterUnavailable
from supernode.presence import Presence
from supernode.scheduler import Scheduler, UnknownPeer, UnknownTask
from supernode.seeding import Seeding
from swarmpull.core.fields import ProtocolError
from swarmpull.core.protocol import Holding, parse_holding

log = logging.getLogger(__name__)


class Members(Protocol):
    """``Membership``: what an event from another replica does here."""

    def member_left(self, task_id: str, peer_id: str) -> None: ...
    def announce_holding(self, peer_id: str, holding: Holding) -> None: ...


class ClusterSync:
    def __init__(
        self,
        cluster: ClusterState,
        seeding: Seeding,
        scheduler: Scheduler,
        members: Members,
        presence: Presence,
        monotonic: Callable[[], float],
        tick_interval: float,
    ) -> None:
        self.cluster = cluster
        self.seeding = seeding
        self.scheduler = scheduler
        self._members = members
        self._presence = presence
        self._monotonic = monotonic
        self._tick_interval = tick_interval
        self.ok = True  # the cluster answered last time
        self._wanted = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        seeding.on_changed = self._wanted.set

    def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_loop(), name="supernode-flush")

    async def stop(self) -> None:
        """Hand the tasks over now, not at lease expiry."""
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        try:
            await self.write_through()
            for task in list(self.seeding.tasks.values()):
                if task.lease is not None:
                    await self.cluster.release(task.id, task.lease)
        except ClusterUnavailable as exc:
            log.warning("could not release leases: %s", exc)

    async def _flush_loop(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            try:
                await self.write_through()
            except ClusterUnavailable:
                await asyncio.sleep(self._tick_interval)  # the batches wait; the tick retries
            except Exception:
                log.exception("write-through failed")

    async def write_through(self, renew: bool = False) -> None:
        """Write the tasks' batches through (with ``renew``, every owned task's, which
        renews its lease); a task whose lease is gone is dropped."""
        tasks = self.seeding.tasks
        writes = {}
        for task in tasks.values():
            if task.lease is not None and (renew or task.batch):
                writes[task.id] = (task.lease, task.batch)
                task.batch = Batch()
        if not writes:
            return
        try:
            lost = await self.cluster.write(writes)
        except ClusterUnavailable:
            for task_id, (_, batch) in writes.items():  # kept, in order, for the next flush
                if task_id in tasks:
                    batch.merge_into(tasks[task_id].batch)
            raise
        for task_id in lost:
            if task_id in tasks:
                self.seeding.drop(tasks[task_id], "its lease was taken")

    async def tick(self) -> None:
        """Write through, renew leases, refresh liveness, read the inboxes."""
        try:
            await self.write_through(renew=True)
            heard, self._presence.heard = self._presence.heard, set()
            await self.cluster.seen(heard)
            last = await self.cluster.last_seen(self.scheduler.peers())
            fresh, now = time.time() - 2 * self._presence.heartbeat_interval(), self._monotonic()
            for peer_id, seen in last.items():
                if seen >= fresh and self.scheduler.knows_peer(peer_id):
                    self.scheduler.peer_seen(peer_id, now)  # heartbeats at another replica
            owned = [t.id for t in self.seeding.tasks.values() if t.lease is not None]
            for task_id, events in (await self.cluster.take_inbox(owned)).items():
                await self._apply_inbox(task_id, events)
            if not self.ok:
                log.warning("cluster state reachable again")
            self.ok = True
        except ClusterUnavailable as exc:
            if self.ok:
                log.error("%s; tasks stay served until their leases lapse", exc)
            self.ok = False

    async def _apply_inbox(self, task_id: str, events: list[dict[str, object]]) -> None:
        """Events other replicas received for a task we own."""
        for event in events:
            peer_id = str(event.get("peer"))
            try:
                if event.get("dropped"):
                    self._members.member_left(task_id, peer_id)
                elif event.get("holding") is not None:
                    await self._presence.ensure(peer_id)
                    self._members.announce_holding(peer_id, parse_holding(event["holding"]))
            except (UnknownPeer, UnknownTask, ProtocolError):
                continue  # gone since, or not ours any more
