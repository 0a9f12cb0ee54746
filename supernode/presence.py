"""Which peers are here: registrations, control channels, liveness, departures.

The one writer of the peers' addresses and of who has a control channel open. A peer is
alive while its channel is open, or while it calls (a report counts as a heartbeat);
one silent for ``peer_timeout`` is dropped from the scheduler, and with it from every
task's parents. A peer registered at another replica is made known here from the
cluster on its first call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from supernode.cluster import ClusterState
from supernode.config import SupernodeConfig
from supernode.metrics import SupernodeMetrics
from supernode.pacing import heartbeat_interval
from supernode.scheduler import Events, Scheduler, UnknownPeer
from swarmpull.core.protocol import PeerRegistration, parse_peer_registration

log = logging.getLogger(__name__)


class Presence:
    def __init__(
        self,
        config: SupernodeConfig,
        scheduler: Scheduler,
        cluster: ClusterState,
        monotonic: Callable[[], float],
        metrics: SupernodeMetrics,
    ) -> None:
        self._config = config
        self._scheduler = scheduler
        self._cluster = cluster
        self._monotonic = monotonic
        self._metrics = metrics
        self._addresses: dict[str, str | None] = {}
        self._channels: dict[str, int] = {}  # peers with a control channel open
        self.heard: set[str] = set()  # peers heard since the cluster was last told

    def join(self, reg: PeerRegistration) -> None:
        """A peer (re)registered, here or at another replica."""
        events = self._scheduler.peer_joined(
            reg.peer_id,
            self._monotonic(),
            serves=reg.address is not None and reg.upload_slots > 0,
            zone=reg.zone,
            rack=reg.rack,
            capacity=reg.upload_rate,
        )
        self._addresses[reg.peer_id] = reg.address
        self.log_events(events)

    async def ensure(self, peer_id: str) -> None:
        """Known here, or made known from the cluster; raises UnknownPeer otherwise (the
        peer registers again)."""
        if self._scheduler.knows_peer(peer_id):
            return
        record = (await self._cluster.get_peers([peer_id])).get(peer_id)
        if record is None:
            raise UnknownPeer(peer_id)
        if not self._scheduler.knows_peer(peer_id):
            self.join(parse_peer_registration(record))

    def seen(self, peer_id: str) -> None:
        self._scheduler.peer_seen(peer_id, self._monotonic())
        self.heard.add(peer_id)

    def connected(self, peer_id: str, delta: int) -> None:
        """A control channel of the peer opened (+1) or closed (-1): while one is open,
        the peer is alive and needs no heartbeat calls."""
        count = self._channels.get(peer_id, 0) + delta
        if count > 0:
            self._channels[peer_id] = count
        else:
            self._channels.pop(peer_id, None)

    def leave(self, peer_id: str) -> None:
        self._addresses.pop(peer_id, None)
        self.log_events(self._scheduler.peer_left(peer_id, self._monotonic()))

    def address(self, peer_id: str) -> str | None:
        return self._addresses.get(peer_id)

    def heartbeat_interval(self) -> float:
        return heartbeat_interval(self._scheduler.peer_count(), self._config)

    def tick(self) -> None:
        """Connected peers are alive; silent ones are dropped."""
        now = self._monotonic()
        scheduler = self._scheduler
        scheduler.peer_timeout = max(scheduler.config.peer_timeout, 3 * self.heartbeat_interval())
        for peer_id in self._channels:  # connected: alive, whether it said anything or not
            if scheduler.knows_peer(peer_id):
                scheduler.peer_seen(peer_id, now)
                self.heard.add(peer_id)
        self.log_events(scheduler.expire(now))
        self._metrics.peers.set(len(self._addresses))

    def log_events(self, events: Events) -> None:
        if not (events.dropped or events.quarantined or events.degraded):
            return
        for peer_id in events.dropped:
            self._addresses.pop(peer_id, None)
            log.info("peer %s dropped", peer_id)
        for peer_id in events.quarantined:
            log.warning("peer %s quarantined: it served corrupt pieces", peer_id)
        for peer_id in events.degraded:
            log.warning("peer %s degraded: it fails or is far slower than its peers", peer_id)
