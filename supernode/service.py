"""The supernode's service: the parts that turn calls into scheduler events, put together.

Each part is the one writer of its state, on the supernode's event loop: ``presence``
(the peers), ``seeding`` (the seed's tasks), ``opening`` (opens, and the claims under
way), ``reports`` (reports, and the traffic they tell of), ``membership`` (who holds
what of a task), ``capabilities`` (who may fetch a task's pieces), ``sync`` (what the
replicas share). The service registers peers, runs the tick and stops them all. HTTP
handlers call the parts; each call runs to its first ``await`` without interruption.
It chooses no piece: a requester gets its parents and picks pieces among them itself.
What other replicas need goes through ``ClusterState``, whichever kind it is (one
supernode or several), so no part has a branch for replicas.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from supernode.capabilities import CapabilityDesk
from supernode.cluster import ClusterState
from supernode.config import SupernodeConfig
from supernode.membership import Membership
from supernode.metrics import SupernodeMetrics
from supernode.opening import Opening
from supernode.presence import Presence
from supernode.reports import Reports
from supernode.scheduler import Scheduler, SeedId, UnknownTask
from supernode.seed_task import SeedTask, TaskState
from supernode.seeding import Seeding
from supernode.sync import ClusterSync
from swarmpull.core.clock import Clock
from swarmpull.core.events import NO_EVENTS, EventSink
from swarmpull.core.fields import at_source
from swarmpull.core.protocol import PeerRegistration
from swarmpull.core.tasks import redact_url
from swarmpull.edges.http import is_loopback

log = logging.getLogger(__name__)


class SupernodeService:
    def __init__(
        self,
        config: SupernodeConfig,
        seeding: Seeding,
        scheduler: Scheduler,
        cluster: ClusterState,
        clock: Clock,
        seed_address: str,
        metrics: SupernodeMetrics,
        events: EventSink = NO_EVENTS,
    ) -> None:
        self.config = config
        self.seeding = seeding
        self.events = events
        self.scheduler = scheduler
        self.cluster = cluster
        self.metrics = metrics
        self._clock = clock
        self._ticker: asyncio.Task[None] | None = None
        self._stopping = False
        monotonic = clock.monotonic
        presence = self.presence = Presence(
            config, scheduler, cluster, seed_address, monotonic, metrics, events
        )
        capabilities = self.capabilities = CapabilityDesk(
            seeding, config.seed_id, seeding.session, config.auth_cache_ttl, clock
        )
        membership = self.membership = Membership(config, seeding, scheduler, presence, monotonic)

        def stopping() -> bool:  # from stop() on, opens and reports are refused (ShuttingDown)
            return self._stopping

        self.opening = Opening(
            config,
            seeding,
            scheduler,
            cluster,
            presence,
            membership,
            capabilities,
            clock,
            stopping=stopping,
            events=events,
        )
        self.reports = Reports(
            config,
            seeding,
            scheduler,
            cluster,
            presence,
            membership,
            capabilities,
            monotonic,
            metrics,
            stopping=stopping,
            events=events,
        )
        self.sync = ClusterSync(
            cluster, seeding, scheduler, membership, presence, monotonic, config.tick_interval
        )

    @property
    def tasks(self) -> dict[str, SeedTask]:
        return self.seeding.tasks

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
        self._stopping = True  # from now on every open and report is refused
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
        if self.membership.checks is not None:
            await self.membership.checks.stop()
        await self.seeding.stop()
        await self.sync.stop()

    async def register_peer(self, reg: PeerRegistration, source: str | None) -> None:
        """``source``: the IP the registration came from; with ``node_addresses`` at
        ``source`` the node's piece server is taken to be there, at the port it names."""
        if self.scheduler.is_seed(reg.peer_id):
            raise SeedId(reg.peer_id)  # before anything of it is written anywhere
        if reg.address is not None and self.config.node_addresses == "source":
            loopback = is_loopback(self.config.listen.host)  # a cluster on one host
            reg = dataclasses.replace(reg, address=at_source(reg.address, source, loopback))
        await self.cluster.put_peer(reg.peer_id, reg.to_json() | {"holdings": []})
        elsewhere = [h for h in reg.holdings if self.seeding.owned(h.task_id) is None]
        await self.cluster.post(
            [(h.task_id, {"peer": reg.peer_id, "holding": h.to_json()}) for h in elsewhere]
        )
        self.presence.join(reg)
        self.events.emit("peer_joined", peer=reg.peer_id, address=reg.address, zone=reg.zone, rack=reg.rack)
        for holding in reg.holdings:
            self.membership.announce_holding(reg.peer_id, holding)
        log.info("peer %s joined from %s (%d holdings)", reg.peer_id, reg.address, len(reg.holdings))

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

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_interval)
            try:
                self.tick()
                await self.sync.tick()
                for task_id in list(self.tasks):
                    self.seeding.owned(task_id)  # drops the tasks whose lease lapsed
            except Exception:  # a bug here must not stop timeouts for good
                log.exception("supernode tick failed")

    def tick(self) -> None:
        """Time advanced: expire silent peers, old failures and idle tasks."""
        self.presence.tick()
        self.reports.tick()
        now = self._clock.monotonic()
        for task in list(self.tasks.values()):
            if task.state is TaskState.FAILED and now - task.failed_at > self.config.failed_task_ttl:
                self.seeding.drop(task, "its failure expired")
            elif now - task.used_at > self.config.task_ttl and task.state is not TaskState.RUNNING:
                self.seeding.drop(task, "idle")
