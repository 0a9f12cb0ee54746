"""The peer's membership in the swarm: registration, heartbeats, re-registration.

The one writer of "are we registered". Downloads call ``ensure_registered()`` before
talking to the supernode and ``lost()`` when the supernode says it does not know us (it
restarted, or dropped us); the heartbeat loop re-registers on its own too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from peer.link import LinkError, SupernodeLink, SupernodeUnavailable
from swarmpull.core.protocol import Heartbeat, Holding, PeerRegistration
from swarmpull.edges.store import PieceStore

log = logging.getLogger(__name__)


class Membership:
    def __init__(self, link: SupernodeLink, store: PieceStore, registration: PeerRegistration) -> None:
        self._link = link
        self._store = store
        self._registration = registration
        self._registered = False
        self._lock = asyncio.Lock()
        self._dropped: list[str] = []
        self.interval = 5.0

    def dropped(self, task_id: str) -> None:
        """A blob left the store: tell the supernode at the next heartbeat."""
        self._dropped.append(task_id)

    def lost(self) -> None:
        self._registered = False

    async def ensure_registered(self) -> None:
        """Register now unless registered; raises SupernodeUnavailable."""
        if self._registered:
            return
        async with self._lock:
            if self._registered:
                return
            reg = PeerRegistration(
                self._registration.peer_id,
                self._registration.address,
                self._registration.upload_slots,
                self._registration.zone,
                self._registration.rack,
                self._holdings(),
            )
            self.interval = await self._link.register(reg)
            self._dropped.clear()  # a fresh registration only announces what we hold
            self._registered = True
            log.info("registered with the supernode (%d holdings)", len(reg.holdings))

    async def run(self) -> None:
        """Heartbeat forever; re-register when the supernode forgot us."""
        backoff = 1.0
        while True:
            try:
                if self._registered:
                    dropped, self._dropped = self._dropped, []
                    try:
                        await self._link.heartbeat(Heartbeat(dropped))
                    except BaseException:
                        self._dropped[:0] = dropped
                        raise
                await self.ensure_registered()
                backoff = 1.0
                await asyncio.sleep(self.interval)
            except LinkError as exc:
                if exc.code == "UNKNOWN_PEER":
                    self._registered = False
                    continue
                log.warning("heartbeat refused: %s", exc)
                await asyncio.sleep(self.interval)
            except SupernodeUnavailable as exc:
                self._registered = False
                log.warning("%s; retrying in %.0fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    async def leave(self) -> None:
        if self._registered:
            self._registered = False
            with contextlib.suppress(LinkError, SupernodeUnavailable):
                await self._link.leave()

    def _holdings(self) -> list[Holding]:
        """What we can serve. Only blobs keyed by content digest: their pieces are the
        same whoever cut them with the same geometry, so the supernode can vouch for them."""
        return [
            Holding(b.task_id, b.meta.size, b.meta.piece_size, b.verified_pieces())
            for b in self._store.blobs()
            if b.task_id.startswith("sha256-") and b.verified_count
        ]
