"""One blob fetched from the swarm: the I/O around the peer's ``PiecePolicy``.

``SwarmFetch`` keeps a long poll open on each parent's piece map (``swarmpull.core.maps``),
checks every piece statement that comes with it against the task's keys, starts the
transfers the policy chooses (within the node's download slots), verifies each piece
against its statement's sha256 from the bytes written to disk, and reports to the
supernode through the control channel when the supernode asks, when the policy needs
parents, and when the blob is complete. It ends when every piece is verified, or raises
``DownloadFailed`` (the caller may then read the rest from upstream).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from peer.control import Control, Reporter
from peer.link import LinkError
from peer.metrics import PeerMetrics
from peer.policy import PiecePolicy
from peer.policy_config import PolicyConfig
from peer.slots import DownloadSlots
from swarmpull.core.bitfield import BitfieldError, from_text, to_text
from swarmpull.core.blobs import DownloadFailed
from swarmpull.core.clock import Clock
from swarmpull.core.events import EventSink
from swarmpull.core.failures import FailureReason
from swarmpull.core.protocol import ParentInfo, ParentStats, ReportAnswer, TaskInfo, TaskReport
from swarmpull.core.rates import Priority
from swarmpull.core.signing import PieceStatement, SignatureError, TaskKeys, keys_from_json
from swarmpull.edges.store import PieceCorrupt, StoredBlob, StoreWriteError, WriteCancelled
from swarmpull.edges.transport import PieceClient, PieceFetchError

log = logging.getLogger(__name__)

MAP_WAIT = 15.0  # seconds a map long poll may wait at a parent
MAP_RETRY = 1.0  # seconds before asking a parent for its map again after a failure
# An unlimited download link, as the policy sees it. The policy adds transfers while the
# rates they are expected to bring fall short of the link; left to its default (100 MB/s)
# one transfer from a fast source meets that, and the source idles between pieces (the
# hash, the commit and the next request). Unlimited means: up to per_parent per source.
UNLIMITED_LINK = 10e9


class SupernodeGone(Exception):
    """The supernode has not answered for a while and the swarm stopped giving pieces."""


class TaskForgotten(Exception):
    """The supernode no longer knows the task (it restarted, or another replica owns it
    now): open it again."""


class _View:
    """What we know a parent holds (a ``MapView``)."""

    __slots__ = ("bits", "version")

    def __init__(self) -> None:
        self.bits = 0
        self.version = -1


@dataclass(slots=True)
class _Parent:
    info: ParentInfo
    view: _View
    poll: asyncio.Task[None] | None = None


class SwarmFetch:
    def __init__(
        self,
        blob: StoredBlob,
        info: TaskInfo,
        control: Control,
        client: PieceClient,
        slots: DownloadSlots,
        metrics: PeerMetrics,
        clock: Clock,
        priority: Priority,
        policy: PolicyConfig,
        download_rate: float | None,
        on_progress: Callable[[], None],
        give_up_after: float,
        events: EventSink,
        awaited: Callable[[], int],
    ) -> None:
        self.blob = blob
        self._events = events
        self.task_id = blob.task_id
        self._control = control
        self._client = client
        self._slots = slots
        self._metrics = metrics
        self._clock = clock
        self._priority = priority
        self._on_progress = on_progress
        self._give_up_after = give_up_after
        self._awaited = awaited  # the pieces readers wait on (``TaskDownload.wait_piece``)
        self._count = blob.geometry.count
        self._keys = TaskKeys()
        self._add_keys(info.keys)
        self.policy = PiecePolicy(
            self._count,
            blob.meta.piece_size,
            policy,
            random.Random(),
            have=blob.have,
            download_rate=download_rate if download_rate is not None else UNLIMITED_LINK,
        )
        self._statements: dict[int, PieceStatement] = dict(blob.statements)
        self._known = blob.have  # pieces whose sha256 we can check
        self._parents: dict[str, _Parent] = {}
        self._transfers: dict[asyncio.Task[None], tuple[int, str]] = {}
        self._wake = asyncio.Event()
        self._failed: DownloadFailed | None = None
        self._forgotten = False
        self._unreachable_since: float | None = None
        self._last_progress = clock.monotonic()
        self.digest: str | None = None
        self.received: Counter[str] = Counter()  # verified bytes by kind of source (peer, seed)
        self._report_in = info.report_in
        self._told_complete = False  # the last report built said we hold every piece
        self._set_parents(info.parents)

    async def run(self) -> None:
        """Fetch until every piece is verified; DownloadFailed or SupernodeGone if not."""
        self._control.watch(self.task_id, Reporter(self._report, self._answered), self._report_in)
        self._slots.share.join(self, self._priority, self.policy.projected, self._wake.set)
        try:
            while not self.blob.all_verified:
                if self._failed is not None:
                    raise self._failed
                if self._forgotten:
                    raise TaskForgotten(self.task_id)
                self._fill()
                if self._unreachable_since is not None:
                    now = self._clock.monotonic()
                    stuck = now - self._last_progress >= self._give_up_after
                    if stuck and now - self._unreachable_since >= self._give_up_after:
                        raise SupernodeGone("no supernode answers and the swarm gives nothing")
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.policy.wake_interval):
                        await self._wake.wait()
            self._control.report_soon(self.task_id)  # complete: a source for everyone now
        finally:
            await self._close()

    # ------------------------------------------------------------- transfers

    def _fill(self) -> None:
        now = self._clock.monotonic()
        room = self._slots.free(self._priority)
        if room > 0:
            ahead = self._slots.share.ahead(self)
            for piece, parent_id in self.policy.choose(now, room, self._known, ahead, self._awaited()):
                parent = self._parents.get(parent_id)
                if parent is None:
                    self.policy.failed(piece, parent_id, FailureReason.ERROR, now)
                    continue
                self._slots.take()
                task = asyncio.create_task(self._transfer(piece, parent), name=f"piece-{piece}")
                task.add_done_callback(self._transfer_done)
                self._transfers[task] = (piece, parent_id)
        if self.policy.needs_parents(now):
            self._control.report_soon(self.task_id)

    def _transfer_done(self, task: asyncio.Task[None]) -> None:
        self._transfers.pop(task, None)
        self._slots.release()
        self._wake.set()
        self._slots.share.changed(self)

    async def _transfer(self, piece: int, parent: _Parent) -> None:
        policy, blob = self.policy, self.blob
        parent_id = parent.info.id
        statement = self._statements.get(piece)
        started = self._clock.monotonic()
        try:
            writer = blob.writer(piece)
        except WriteCancelled:
            policy.finished(piece, parent_id, 0, 0.0, started)
            return
        if statement is None:  # cannot happen: the policy chooses known pieces only
            writer.abort()
            policy.failed(piece, parent_id, FailureReason.ERROR, started)
            return
        kind = "seed" if parent.info.seed else "peer"
        try:
            deadline = policy.deadline(parent_id, writer.length, self._slots.used)
            fetched = await self._client.fetch(
                parent.info.address,
                self.task_id,
                piece,
                writer,
                self._priority,
                deadline,
                source=parent_id,
                seed=parent.info.seed,
            )
            writer.seal()  # this copy owns the piece's region from here on
            digest = await asyncio.to_thread(writer.digest)
            writer.commit(statement.sha_hex, statement=statement, digest=digest)
        except PieceFetchError as exc:
            writer.abort()
            self._metrics.pieces.labels("failed").inc()
            self._failed_event(piece, parent_id, exc.reason, str(exc))
            log.debug("piece %d from %s: %s", piece, parent_id, exc)
            policy.failed(piece, parent_id, exc.reason, self._clock.monotonic())
            return
        except PieceCorrupt as exc:
            writer.abort()
            self._metrics.pieces.labels("corrupt").inc()
            self._failed_event(piece, parent_id, FailureReason.CORRUPT, str(exc))
            log.warning("corrupt piece from %s (%s): %s", parent_id, parent.info.address, exc)
            policy.failed(piece, parent_id, FailureReason.CORRUPT, self._clock.monotonic())
            return
        except WriteCancelled:
            return  # another copy won
        except StoreWriteError as exc:
            writer.abort()
            self._failed = DownloadFailed(f"the disk refused the blob: {exc}", cache_full=True)
            self._wake.set()
            return
        except BaseException:
            writer.abort()
            raise
        now = self._clock.monotonic()
        for twin in policy.finished(piece, parent_id, writer.length, now - started, now):
            for task, (other_piece, other_parent) in list(self._transfers.items()):
                if other_piece == piece and other_parent == twin:
                    task.cancel()
        if fetched.map is not None:
            self._update_view(parent, fetched.map)
        self._last_progress = now
        self._events.emit(
            "piece_finished",
            task=self.task_id,
            piece=piece,
            source=parent_id,
            seed=parent.info.seed,
            bytes=writer.length,
            seconds=round(now - started, 4),
        )
        self._metrics.pieces.labels("verified").inc()
        self._metrics.download_bytes.labels(kind).inc(writer.length)
        self.received[kind] += writer.length
        self._metrics.transfers.download_wire_bytes.labels(kind).inc(fetched.wire)
        if fetched.saved:
            self._metrics.transfers.saved.labels("download").inc(fetched.saved)
        self._on_progress()

    def _failed_event(self, piece: int, parent_id: str, reason: FailureReason, why: str) -> None:
        self._events.emit(
            "piece_failed", task=self.task_id, piece=piece, source=parent_id, reason=reason.value, why=why
        )

    # --------------------------------------------------------------- parents

    def _set_parents(self, parents: list[ParentInfo]) -> None:
        views = []
        fresh: dict[str, _Parent] = {}
        for info in parents:
            parent = self._parents.get(info.id)
            if parent is None or parent.info.address != info.address:
                if parent is not None and parent.poll is not None:
                    parent.poll.cancel()
                parent = _Parent(info, _View())
            fresh[info.id] = parent
            views.append((info.id, info.seed, parent.view))
        for parent_id, parent in self._parents.items():
            if parent_id not in fresh and parent.poll is not None:
                parent.poll.cancel()
        self._parents = fresh
        self.policy.set_parents(views)
        for parent in fresh.values():
            if parent.poll is None or parent.poll.done():
                parent.poll = asyncio.create_task(self._poll_map(parent), name=f"map-{parent.info.id[:12]}")
        self._wake.set()

    async def _poll_map(self, parent: _Parent) -> None:
        """Keep our view of a parent's pieces current: a long poll answered at each new
        piece it holds. Statements that come with it are checked before any is used."""
        failures = 0
        while True:
            try:
                piece_map = await self._client.fetch_map(
                    parent.info.address,
                    self.task_id,
                    self._count,
                    self._known,
                    parent.view.version,
                    MAP_WAIT,
                    source=parent.info.id,
                    seed=parent.info.seed,
                )
            except PieceFetchError as exc:
                failures += 1
                if failures >= 2 and exc.reason is not FailureReason.MISSING:
                    self.policy.parent_failed(parent.info.id, exc.reason, self._clock.monotonic())
                    self._wake.set()
                await asyncio.sleep(MAP_RETRY * min(failures, 10))
                continue
            failures = 0
            if piece_map.statements:
                await self._learn(piece_map.statements, parent)
            # Pieces it offered that we had not taken yet: its news comes faster than we
            # use it, and the next can wait a little.
            backlog = self.policy.offers(parent.info.id)
            parent.view.bits = piece_map.bits
            parent.view.version = piece_map.version
            self.policy.map_changed(parent.info.id)
            self._wake.set()
            if backlog:
                await asyncio.sleep(self.policy.config.map_pause)

    async def _learn(self, statements: list[PieceStatement], parent: _Parent) -> None:
        fresh = [s for s in statements if not self._known >> s.piece & 1]
        checked = await asyncio.to_thread(self._check, fresh) if len(fresh) > 8 else self._check(fresh)
        for statement in checked:
            self._statements[statement.piece] = statement
            self._known |= 1 << statement.piece
        if len(checked) < len(fresh):
            log.warning("%s sent piece statements no trusted key signed", parent.info.id)
            self.policy.parent_failed(parent.info.id, FailureReason.CORRUPT, self._clock.monotonic())

    def _check(self, statements: list[PieceStatement]) -> list[PieceStatement]:
        out = []
        for statement in statements:
            try:
                self._keys.check(self.task_id, statement)
            except SignatureError:
                continue
            out.append(statement)
        return out

    def _update_view(self, parent: _Parent, text: str) -> None:
        try:
            bits = from_text(text, self._count)
        except BitfieldError:
            return
        if bits.bit_count() > parent.view.bits.bit_count():
            parent.view.bits = bits  # its version moves with the long poll
            self.policy.map_changed(parent.info.id)

    def _add_keys(self, keys: list[str]) -> None:
        try:
            for key in keys_from_json(keys):
                self._keys.add(key)
        except SignatureError as exc:
            log.warning("the supernode sent a bad key: %s", exc)

    # ----------------------------------------------------------------- reports

    def _report(self) -> TaskReport:
        now = self._clock.monotonic()
        reports, dropped, bad = self.policy.take_report(now)
        stats = [ParentStats(p, r.bytes, r.seconds, r.failures, r.reason) for p, r in reports.items()]
        self._told_complete = self.blob.all_verified
        return TaskReport(self.task_id, to_text(self.blob.have, self._count), stats, dropped, bad)

    def _answered(self, answer: ReportAnswer | LinkError) -> None:
        now = self._clock.monotonic()
        if isinstance(answer, LinkError):
            if answer.status >= 500 and answer.code != "UPSTREAM_ERROR":
                self._unreachable_since = self._unreachable_since or now
            elif answer.code in ("UNKNOWN_TASK", "UNKNOWN_PEER", "NOT_OWNER"):
                self._forgotten = True
            else:
                self._failed = DownloadFailed(f"supernode refused: {answer}")
            self._wake.set()
            return
        self._unreachable_since = None
        if self._told_complete:
            self._control.unwatch(self.task_id)  # the report that says we are complete is in
        elif self.blob.all_verified:  # completed while this report was on its way: say so
            self._control.report_soon(self.task_id)
        if answer.state == "failed":
            # Its pieces were signed before the whole digest was checked: none is kept.
            self._failed = DownloadFailed(answer.error or "the supernode failed this task", untrusted=True)
        else:
            self._add_keys(answer.keys)
            if answer.digest is not None:
                self.digest = str(answer.digest)
            if not self.blob.all_verified:
                self._set_parents(answer.parents)
        self._wake.set()

    async def _close(self) -> None:
        self._slots.share.leave(self)
        for task in list(self._transfers):
            task.cancel()
        polls = [p.poll for p in self._parents.values() if p.poll is not None]
        for poll in polls:
            poll.cancel()
        await asyncio.gather(*self._transfers, *polls, return_exceptions=True)
        self._transfers.clear()
        if not self.blob.all_verified:
            self._control.unwatch(self.task_id)
