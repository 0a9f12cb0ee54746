"""The supernode's service: the one writer of the scheduler and of every task's state.

HTTP handlers and origin fetches call into it from the supernode's event loop; each call
runs to its first ``await`` without interruption, so the scheduler is only ever touched
by one piece of code at a time. Decisions the scheduler returns for other peers (waiting
in a long poll) are delivered through their futures.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable

import aiohttp

from supernode.config import SupernodeConfig
from supernode.metrics import SupernodeMetrics
from supernode.origin_limits import OriginLimits
from supernode.scheduler import (
    Assignment,
    Decisions,
    Failure,
    FailureReason,
    Scheduler,
    Timing,
    UnknownPeer,
    UnknownTask,
)
from swarmpull.clock import Clock
from swarmpull.digest import Digest
from swarmpull.geometry import choose_piece_size
from swarmpull.protocol import (
    Heartbeat,
    OpenTask,
    PeerRegistration,
    PieceAssignment,
    ProtocolError,
    SyncRequest,
    SyncResponse,
    TaskInfo,
)
from swarmpull.store import BlobMeta, PieceStore, StoredBlob, StoreFull
from swarmpull.tasks import redact_url, task_id_for
from swarmpull.upstream import UpstreamError, UpstreamFetch

log = logging.getLogger(__name__)


class TaskState(enum.Enum):
    PENDING = "pending"  # waiting for the upstream's first answer
    RUNNING = "running"  # pieces arriving from upstream
    PARTIAL = "partial"  # some pieces held (after a restart), no upstream read under way
    SEEDED = "seeded"  # every piece held, whole digest verified
    FAILED = "failed"


class TaskFailed(Exception):
    """The task cannot be served; the message says why (upstream status, digest...).
    ``direct`` allows this one peer to try the upstream itself."""

    def __init__(self, message: str, status: int | None = None, direct: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.direct = direct


class ShuttingDown(Exception):
    """The supernode is stopping: ask another one."""


class SeedTask:
    """One blob on the supernode: where it comes from and how far it got."""

    def __init__(self, task_id: str, url: str, expected: Digest | None, headers: dict[str, str]):
        self.id = task_id
        self.url = url
        self.expected = expected
        self.headers = headers  # in memory only: never logged, stored or sent to peers
        self.state = TaskState.PENDING
        self.blob: StoredBlob | None = None
        self.digest: Digest | None = expected
        self.error: str | None = None
        self.error_status: int | None = None
        self.retryable = False  # the upstream may answer others (5xx, timeouts)
        self.direct_granted = 0
        self.failed_at = 0.0
        self.fetch: asyncio.Task[None] | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def __repr__(self) -> str:
        return f"<SeedTask {self.id[:20]} {self.state.name}>"

    def info(self) -> TaskInfo:
        assert self.blob is not None
        return TaskInfo(self.id, self.blob.meta.size, self.blob.meta.piece_size, self.digest)


class SupernodeService:
    def __init__(
        self,
        config: SupernodeConfig,
        store: PieceStore,
        session: aiohttp.ClientSession,
        clock: Clock,
        seed_address: Callable[[], str],
        metrics: SupernodeMetrics,
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self._session = session
        self._clock = clock
        self._seed_address = seed_address
        self.scheduler = Scheduler(config.scheduler)
        self.scheduler.add_seed(config.seed_id, config.seed_upload_slots, config.seed_upload_limit)
        self._origins = OriginLimits(list(config.origin_limits), clock)
        self.tasks: dict[str, SeedTask] = {}
        self._addresses: dict[str, str | None] = {}
        self._waiters: dict[tuple[str, str], asyncio.Future[list[Assignment]]] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        for blob in self.store.blobs():  # what the seed cache kept from an earlier run
            self._restore(blob)
        self._ticker = asyncio.create_task(self._tick_loop(), name="supernode-tick")

    def _restore(self, blob: StoredBlob) -> None:
        """Know a stored blob before anyone asks, so returning peers can announce theirs."""
        if blob.all_verified and not blob.complete:
            self.store.remove(blob.task_id)  # crashed between last piece and completion
            return
        digest = Digest.parse(blob.meta.digest) if blob.meta.digest else None
        expected = digest if blob.task_id.startswith("sha256-") else None
        task = SeedTask(blob.task_id, "", expected, {})
        self.tasks[blob.task_id] = task
        self._adopt(task, blob)
        # A partial blob resumes when a peer opens the task again (with its URL).
        task.state = TaskState.SEEDED if blob.complete else TaskState.PARTIAL
        task.digest = digest

    async def stop(self) -> None:
        self._stopping = True  # from now on every call is refused, so nothing waits here
        tasks = [t for t in (self._ticker, *(s.fetch for s in self.tasks.values())) if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for future in self._waiters.values():
            if not future.done():
                future.set_result([])
        self._waiters.clear()

    # ------------------------------------------------------------------- peers

    def register_peer(self, reg: PeerRegistration) -> None:
        now = self._clock.monotonic()
        slots = reg.upload_slots if reg.address else 0
        decisions = self.scheduler.peer_joined(
            reg.peer_id, now, slots=slots, zone=reg.zone, rack=reg.rack, capacity=reg.upload_rate
        )
        self._addresses[reg.peer_id] = reg.address
        for holding in reg.holdings:
            task = self.tasks.get(holding.task_id)
            blob = task.blob if task else None
            if blob is None or (blob.meta.size, blob.meta.piece_size) != (
                holding.size,
                holding.piece_size,
            ):
                continue  # unknown here, or cut differently: its pieces cannot be vouched for
            pieces = self._known_pieces(blob, holding.pieces)
            decisions.merge(self.scheduler.announce(holding.task_id, reg.peer_id, pieces, now))
        self.metrics.peers.set(len(self._addresses))
        self._deliver(decisions)
        log.info("peer %s joined from %s (%d holdings)", reg.peer_id, reg.address, len(reg.holdings))

    def heartbeat(self, peer_id: str, beat: Heartbeat) -> None:
        now = self._clock.monotonic()
        self.scheduler.peer_seen(peer_id, now)
        for task_id in beat.dropped_tasks:
            self._deliver(self.scheduler.member_left(task_id, peer_id, now))

    def leave(self, peer_id: str) -> None:
        self._deliver(self.scheduler.peer_left(peer_id, self._clock.monotonic()))

    # ------------------------------------------------------------------- tasks

    async def open_task(self, req: OpenTask) -> TaskInfo:
        """Create or join the task for a blob; waits until its geometry is known."""
        if self._stopping:
            raise ShuttingDown()
        if not self.scheduler.knows_peer(req.peer_id):
            raise UnknownPeer(req.peer_id)
        task_id = task_id_for(req.url, req.digest)
        task = self.tasks.get(task_id)
        now = self._clock.monotonic()
        expired = now - (task.failed_at if task else now) >= self.config.failed_task_ttl
        if task is not None and task.state is TaskState.FAILED and expired:
            del self.tasks[task_id]
            task = None
        if task is None:
            task = self._create_task(task_id, req)
        elif req.headers:
            task.headers = dict(req.headers)  # the newest token is the likeliest to be valid
        if task.state is TaskState.PARTIAL:
            task.url = req.url
            self._start_fetch(task)
        await asyncio.shield(task.ready)
        if task.state is TaskState.FAILED:
            direct = task.retryable and task.direct_granted < self.config.direct_per_task
            task.direct_granted += direct
            raise TaskFailed(task.error or "task failed", task.error_status, direct)
        if req.have and self.scheduler.knows_peer(req.peer_id):
            assert task.blob is not None
            pieces = self._known_pieces(task.blob, req.have)
            self._deliver(self.scheduler.announce(task_id, req.peer_id, pieces, now))
        return task.info()

    async def sync(self, task_id: str, req: SyncRequest) -> SyncResponse:
        if self._stopping:
            raise ShuttingDown()
        task = self.tasks.get(task_id)
        if task is None or task.blob is None:
            raise UnknownTask(task_id)
        self.metrics.syncs.inc()
        if task.state is TaskState.FAILED:
            return SyncResponse([], "failed", task.digest, task.error)
        count = task.blob.geometry.count
        for piece in (*req.finished, *(f.piece for f in req.failed)):
            if piece >= count:
                raise ProtocolError(f"piece {piece} out of range (the task has {count})")
        failures = [Failure(f.piece, f.source, FailureReason(f.reason)) for f in req.failed]
        timings = [Timing(t.piece, t.source, t.size, t.seconds) for t in req.timings]
        for failure in failures:
            self.metrics.failures.labels(failure.reason.value).inc()
        decisions = self.scheduler.sync(
            task_id,
            req.peer_id,
            self._clock.monotonic(),
            finished=req.finished,
            failed=failures,
            timings=timings,
            uploads=req.uploads,
            want=req.want,
            park=req.wait > 0,
        )
        own = decisions.assignments.pop((task_id, req.peer_id), [])
        self._deliver(decisions)
        if not own and req.wait > 0 and self.scheduler.is_waiting(task_id, req.peer_id):
            own = await self._wait(task_id, req.peer_id, min(req.wait, self.config.long_poll_max))
        state = "seeded" if task.state is TaskState.SEEDED else "running"
        if task.state is TaskState.FAILED:  # failed while this call waited
            return SyncResponse([], "failed", task.digest, task.error)
        return SyncResponse([self._wire(task, a) for a in own], state, task.digest)

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

    def _create_task(self, task_id: str, req: OpenTask) -> SeedTask:
        task = SeedTask(task_id, req.url, req.digest, dict(req.headers))
        self.tasks[task_id] = task
        self._start_fetch(task)
        return task

    def _adopt(self, task: SeedTask, blob: StoredBlob) -> None:
        """The task's geometry is known: schedule it, with the pieces the seed holds."""
        task.blob = blob
        task.state = TaskState.RUNNING
        now = self._clock.monotonic()
        self.scheduler.add_task(task.id, blob.geometry.count, self.config.seed_id, blob.meta.piece_size)
        for piece in blob.verified_pieces():
            self._deliver(self.scheduler.piece_seeded(task.id, piece, now))
        if not task.ready.done():
            task.ready.set_result(None)

    def _start_fetch(self, task: SeedTask) -> None:
        if task.fetch is not None and not task.fetch.done():
            return
        events = _FetchEvents(self, task)
        fetch = UpstreamFetch(
            self._session,
            task.url,
            lambda: task.headers,
            task.expected,
            events,
            self.config.upstream,
            on_bytes=self.metrics.upstream_bytes.inc,
            throttle=self._origins.for_url(task.url),
        )
        task.state = TaskState.RUNNING if task.blob is not None else TaskState.PENDING
        task.fetch = asyncio.create_task(fetch.run(task.blob), name=f"origin-{task.id[:20]}")
        task.fetch.add_done_callback(lambda done: self._fetch_done(task, done))

    def _fetch_done(self, task: SeedTask, done: asyncio.Task[None]) -> None:
        if done.cancelled():
            return
        exc = done.exception()
        if exc is None:
            assert task.blob is not None
            task.blob.mark_complete(str(task.digest))
            task.state = TaskState.SEEDED
            self.metrics.tasks.labels("seeded").inc()
            log.info("task %s seeded (%d bytes)", task.id, task.blob.meta.size)
            return
        if isinstance(exc, UpstreamError | StoreFull):
            message, status = str(exc), getattr(exc, "status", None)
        else:
            log.error("task %s: back-to-source crashed", task.id, exc_info=exc)
            message, status = f"internal error: {type(exc).__name__}", None
        definitive = isinstance(exc, UpstreamError) and exc.definitive
        task.retryable = isinstance(exc, UpstreamError) and not definitive
        self._fail(task, message, status, bad_data=definitive)

    def _fail(self, task: SeedTask, message: str, status: int | None, bad_data: bool) -> None:
        log.warning("task %s failed: %s", task.id, message)
        task.state = TaskState.FAILED
        task.error, task.error_status = message, status
        task.failed_at = self._clock.monotonic()
        self.metrics.tasks.labels("failed").inc()
        if not task.ready.done():
            task.ready.set_result(None)
        for peer_id in self.scheduler.remove_task(task.id):
            future = self._waiters.pop((task.id, peer_id), None)
            if future is not None and not future.done():
                future.set_result([])
        if bad_data and task.blob is not None:
            self.store.remove(task.id)  # a lying upstream's bytes are not kept
        task.blob = None

    def _known_pieces(self, blob: StoredBlob, pieces: list[int]) -> list[int]:
        """The pieces whose sha256 we hold: only those can be checked by requesters."""
        return [p for p in pieces if p in blob.piece_sha]

    def _wire(self, task: SeedTask, assignment: Assignment) -> PieceAssignment:
        assert task.blob is not None
        source = assignment.source
        seed = source == self.config.seed_id
        address = self._seed_address() if seed else self._addresses[source] or ""
        self.metrics.assignments.labels("seed" if seed else "peer").inc()
        sha = task.blob.piece_sha[assignment.piece]
        return PieceAssignment(assignment.piece, source, address, sha, seed)

    async def _wait(self, task_id: str, peer_id: str, timeout: float) -> list[Assignment]:
        key = (task_id, peer_id)
        previous = self._waiters.pop(key, None)
        if previous is not None and not previous.done():
            previous.set_result([])
        future: asyncio.Future[list[Assignment]] = asyncio.get_running_loop().create_future()
        self._waiters[key] = future
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(future)
        except TimeoutError:
            pass  # answered empty, unless work arrived while the timeout was being handled
        except asyncio.CancelledError:
            if future.done() and future.result():  # handed work, but the peer hung up
                pieces = [a.piece for a in future.result()]
                self._deliver(self.scheduler.abandon(task_id, peer_id, pieces, self._clock.monotonic()))
            raise
        finally:
            if self._waiters.get(key) is future:
                del self._waiters[key]
                self.scheduler.unpark(task_id, peer_id)
        return future.result() if future.done() else []

    def _deliver(self, decisions: Decisions) -> None:
        """Hand assignments to the peers waiting for them; take back the undeliverable."""
        pending = [decisions]
        while pending:
            current = pending.pop()
            for peer_id in current.dropped:
                self._addresses.pop(peer_id, None)
                log.info("peer %s dropped", peer_id)
            for peer_id in current.quarantined:
                log.warning("peer %s quarantined: it served a corrupt piece", peer_id)
            for peer_id in current.degraded:
                log.warning("peer %s degraded: its transfers run far slower than its peers'", peer_id)
            for (task_id, peer_id), batch in current.assignments.items():
                future = self._waiters.pop((task_id, peer_id), None)
                if future is not None and not future.done():
                    future.set_result(batch)
                    continue
                now = self._clock.monotonic()
                pieces = [a.piece for a in batch]
                pending.append(self.scheduler.abandon(task_id, peer_id, pieces, now))
        self.metrics.peers.set(len(self._addresses))

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_interval)
            try:
                self.tick()
            except Exception:  # a bug here must not stop timeouts for good
                log.exception("supernode tick failed")

    def tick(self) -> None:
        """Time advanced: expire silent peers and overdue work, forget old failures."""
        now = self._clock.monotonic()
        self._deliver(self.scheduler.expire(now))
        ttl = self.config.failed_task_ttl
        for task_id, task in list(self.tasks.items()):
            if task.state is TaskState.FAILED and now - task.failed_at > ttl:
                del self.tasks[task_id]


class _FetchEvents:
    """Connects one task's ``UpstreamFetch`` to the service."""

    def __init__(self, service: SupernodeService, task: SeedTask) -> None:
        self._service = service
        self._task = task

    def geometry(self, size: int) -> StoredBlob:
        service, task = self._service, self._task
        piece_size = service.config.piece_size or choose_piece_size(size)
        meta = BlobMeta(
            task.id,
            size,
            piece_size,
            digest=str(task.expected) if task.expected else None,
            url=redact_url(task.url),
        )
        blob = service.store.create(meta)
        service._adopt(task, blob)
        return blob

    def digest(self, digest: Digest) -> None:
        self._task.digest = digest

    def piece(self, index: int, sha: str) -> None:
        service = self._service
        now = service._clock.monotonic()
        service._deliver(service.scheduler.piece_seeded(self._task.id, index, now))
