"""Who holds what of the tasks this replica owns: peers join them (an open, a holding
announced after a restart or at another replica, a blob fetched over BitTorrent) and
leave them, and the scheduler's requests to check a source go out from here.

Opens join here (``opening``); reports leave and ask for checks here (``reports``), as
do the events other replicas pass on (``ClusterSync``, whose ``Members`` this is). A
peer's pieces count only where the supernode holds their sha256 (``SeedTask.vouched``):
only those can be checked by the requesters they are offered to.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from supernode.config import SupernodeConfig
from supernode.pacing import report_interval
from supernode.presence import Presence
from supernode.scheduler import Check, Parent, Scheduler
from supernode.seed_task import SeedTask
from supernode.seeding import Seeding
from supernode.verify import SourceChecks
from swarmpull.core.bitfield import BitfieldError, from_text, to_text
from swarmpull.core.protocol import Holding


class Membership:
    def __init__(
        self,
        config: SupernodeConfig,
        seeding: Seeding,
        scheduler: Scheduler,
        presence: Presence,
        monotonic: Callable[[], float],
    ) -> None:
        self._config = config
        self._seeding = seeding
        self._scheduler = scheduler
        self._presence = presence
        self._monotonic = monotonic
        self._rng = random.Random()
        self.checks: SourceChecks | None = None  # set by whoever can fetch pieces (the server)

    def join(self, task: SeedTask, peer_id: str, have: int) -> list[Parent]:
        """``peer_id`` is a member of ``task`` holding ``have``: its parents."""
        blob = task.blob
        if blob is None:
            raise RuntimeError(f"task {task.id} joined before its geometry is known")
        # A read after a poisoned one: whatever the peer held before it came from that read.
        have = task.vouched(have) if task.signer is None else 0
        parents = self._scheduler.join(task.id, peer_id, have, self._monotonic())
        self.check(self._scheduler.take_checks())
        self._seeding.holds(task, peer_id, to_text(have, blob.geometry.count), have)
        return parents

    def announce_holding(self, peer_id: str, holding: Holding) -> None:
        """A peer holds pieces of a task we own (it restarted, or registered elsewhere)."""
        task = self._seeding.owned(holding.task_id)
        blob = task.blob if task else None
        if (
            task is None
            or blob is None
            or (blob.meta.size, blob.meta.piece_size) != (holding.size, holding.piece_size)
        ):
            return  # unknown here, or cut differently: its pieces cannot be vouched for
        if task.public is False and peer_id not in task.granted:
            # A private blob's: a claim makes no member (and parent) of a stranger. One
            # restored from the seed cache is undecided until a read says (its holders
            # register again after a restart, and are believed as before).
            return
        try:
            have = from_text(holding.have, blob.geometry.count)
        except BitfieldError:
            return
        self.join(task, peer_id, have)

    def holds_blob(self, peer_id: str, task_id: str) -> None:
        """A peer holds a whole blob it fetched another way (BitTorrent): a source for
        the HTTP swarm from now on."""
        task = self._seeding.owned(task_id)
        blob = task.blob if task else None
        if blob is None or not self._scheduler.knows_peer(peer_id):
            return
        count = blob.geometry.count
        have = (1 << count) - 1
        self.announce_holding(
            peer_id, Holding(task_id, blob.meta.size, blob.meta.piece_size, to_text(have, count))
        )

    def member_left(self, task_id: str, peer_id: str) -> None:
        task = self._seeding.owned(task_id)
        if task is not None:
            self._seeding.left(task, peer_id)
        self._scheduler.member_left(task_id, peer_id)

    def check(self, checks: list[Check]) -> None:
        """Check these sources ourselves (accused of corruption, or claiming too much)."""
        if not checks:
            return
        if self.checks is not None:
            self.checks.submit(checks)
            return
        now = self._monotonic()  # nobody to check with: the witnesses decide at once
        for check in checks:
            self._presence.log_events(self._scheduler.check_failed(check.source, now))

    def report_in(self, task: SeedTask) -> float:
        """Seconds until a member of ``task`` reports next (``pacing``)."""
        return report_interval(self._scheduler.members(task.id), self._config, self._rng.random())
