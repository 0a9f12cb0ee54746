"""Which peers are here: registrations, control channels, liveness, departures.

The one writer of the peers' addresses and labels (zone, rack) and of who has a control
channel open. A peer is alive while its channel is open, or while it calls (a report
counts as a heartbeat); one silent for ``peer_timeout`` is dropped from the scheduler,
and with it from every task's parents. A peer registered at another replica is made known here from the
cluster on its first call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from supernode.cluster import ClusterState
from supernode.config import SupernodeConfig
from supernode.metrics import SupernodeMetrics
from supernode.pacing import heartbeat_interval
from supernode.scheduler import Events, Parent, Scheduler, UnknownPeer
from swarmpull.core.events import NO_EVENTS, EventSink
from swarmpull.core.protocol import ParentInfo, PeerRegistration, parse_peer_registration

log = logging.getLogger(__name__)


class Presence:
    def __init__(
        self,
        config: SupernodeConfig,
        scheduler: Scheduler,
        cluster: ClusterState,
        seed_address: str,
        monotonic: Callable[[], float],
        metrics: SupernodeMetrics,
        events: EventSink = NO_EVENTS,
    ) -> None:
        self._config = config
        self._scheduler = scheduler
        self._cluster = cluster
        self._seed_address = seed_address  # where the seed's piece server listens
        self._monotonic = monotonic
        self._metrics = metrics
        self._events = events
        self._addresses: dict[str, str | None] = {}
        self._labels: dict[str, tuple[str | None, str | None]] = {}  # peer -> (zone, rack)
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
        # First what the earlier registration's departure forgets (its address among it),
        # then the new one's: the other way round, a peer that registered where it was
        # known (made known from the cluster, after a takeover) was left without an
        # address, a holder and parent no requester was ever given.
        self.log_events(events, why="rejoined")
        self._addresses[reg.peer_id] = reg.address
        self._labels[reg.peer_id] = (reg.zone, reg.rack)

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
        self._forget(peer_id)
        self.log_events(self._scheduler.peer_left(peer_id, self._monotonic()), why="left")

    def address(self, peer_id: str) -> str | None:
        return self._addresses.get(peer_id)

    def reach(self, parents: list[Parent]) -> list[ParentInfo]:
        """The parents chosen for a requester, where it reaches them (one that left is
        not handed out)."""
        out = []
        for parent in parents:
            if parent.seed:
                out.append(ParentInfo(parent.id, self._seed_address, True))
                continue
            address = self._addresses.get(parent.id)
            if address is not None:
                out.append(ParentInfo(parent.id, address))
        self._metrics.parents.inc(len(out))
        return out

    def has_channel(self, peer_id: str) -> bool:
        """Whether the peer has a control channel open here (status pages)."""
        return peer_id in self._channels

    def labels(self, peer_id: str) -> tuple[str | None, str | None]:
        """A registered peer's (zone, rack); UnknownPeer if it is not registered."""
        if not self._scheduler.knows_peer(peer_id):
            raise UnknownPeer(peer_id)
        return self._labels.get(peer_id, (None, None))

    def live(self) -> dict[str, tuple[str | None, str | None]]:
        """Registered peers that still heartbeat, with their (zone, rack)."""
        return {p: self._labels.get(p, (None, None)) for p in self._scheduler.peers()}

    def _forget(self, peer_id: str) -> None:
        self._addresses.pop(peer_id, None)
        self._labels.pop(peer_id, None)

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

    def log_events(self, events: Events, why: str = "dropped") -> None:
        """Log what the scheduler did besides answering, and write it to the events log
        (``why`` the peers it dropped left)."""
        if not (events.dropped or events.quarantined or events.degraded or events.unheeded):
            return
        for peer_id in events.dropped:
            self._forget(peer_id)
            self._events.emit("peer_left", peer=peer_id, why=why)
            log.info("peer %s %s", peer_id, why)
        for peer_id in events.quarantined:
            self._events.emit("quarantined", peer=peer_id)
            log.warning("peer %s quarantined: it served corrupt pieces", peer_id)
        for peer_id, why in events.degraded:
            self._events.emit("degraded", peer=peer_id, why=why)
            log.warning("peer %s degraded: %s", peer_id, why)
        for peer_id in events.unheeded:
            self._events.emit("unheeded", peer=peer_id)
            log.warning("peer %s lost its standing: its claims about other peers were lies; ignored", peer_id)
