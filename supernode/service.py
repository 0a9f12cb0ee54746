"""The supernode's service: the one writer of the scheduler and of every task's state.

HTTP handlers and origin fetches call into it from the supernode's event loop; each call
runs to its first ``await`` without interruption, so the scheduler is only ever touched
by one piece of code at a time. Decisions the scheduler returns for other peers (waiting
in a long poll) are delivered through their futures.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable

import aiohttp

from supernode.config import SupernodeConfig
from supernode.metrics import SupernodeMetrics
from supernode.origin_limits import OriginLimits
from supernode.replication import Batch, Lease, NotOwner, RedisUnavailable, Replication, TaskRecord
from supernode.scheduler import (
    Assignment,
    Decisions,
    Failure,
    Scheduler,
    Timing,
    UnknownPeer,
    UnknownTask,
)
from supernode.seed_task import SeedTask, ShuttingDown, TaskFailed, TaskState
from swarmpull.core.clock import Clock
from swarmpull.core.digest import Digest
from swarmpull.core.geometry import choose_piece_size
from swarmpull.core.protocol import (
    Heartbeat,
    Holding,
    OpenTask,
    PeerRegistration,
    PieceAssignment,
    ProtocolError,
    SyncRequest,
    SyncResponse,
    TaskInfo,
    parse_holding,
    parse_peer_registration,
)
from swarmpull.core.tasks import redact_url, task_id_for
from swarmpull.edges.origin import UpstreamError, UpstreamFetch
from swarmpull.edges.store import BlobMeta, PieceStore, StoredBlob, StoreFull

log = logging.getLogger(__name__)


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
        self.replication: Replication | None = None
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
        self._claims: dict[str, asyncio.Future[None]] = {}
        self._heard: set[str] = set()  # peers heard since the last flush to Redis
        self._staged_bytes = 0
        self.redis_ok = True

    def attach(self, replication: Replication) -> None:
        """Share state with other replicas through Redis (before ``start``)."""
        self.replication = replication
        self._origins = OriginLimits(list(self.config.origin_limits), self._clock, replication)

    async def start(self) -> None:
        if self.replication is None:  # with replicas, a stored blob is reused when claimed
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
        if self.replication is not None:  # hand the tasks over now, not at lease expiry
            try:
                await self._write_through()
                for task in self.tasks.values():
                    if task.lease is not None:
                        await self.replication.release(task.id, task.lease)
            except RedisUnavailable as exc:
                log.warning("could not release leases: %s", exc)

    # ------------------------------------------------------------------- peers

    async def register_peer(self, reg: PeerRegistration) -> None:
        if self.replication is not None:  # every replica can read it from there
            await self.replication.put_peer(reg.peer_id, reg.to_json() | {"holdings": []})
            elsewhere = [h for h in reg.holdings if self._owned(h.task_id) is None]
            await self.replication.post(
                [(h.task_id, {"peer": reg.peer_id, "holding": h.to_json()}) for h in elsewhere]
            )
        self._join(reg)
        for holding in reg.holdings:
            self._announce_holding(reg.peer_id, holding)
        log.info("peer %s joined from %s (%d holdings)", reg.peer_id, reg.address, len(reg.holdings))

    def _join(self, reg: PeerRegistration) -> None:
        now = self._clock.monotonic()
        slots = reg.upload_slots if reg.address else 0
        decisions = self.scheduler.peer_joined(
            reg.peer_id, now, slots=slots, zone=reg.zone, rack=reg.rack, capacity=reg.upload_rate
        )
        self._addresses[reg.peer_id] = reg.address
        self.metrics.peers.set(len(self._addresses))
        self._deliver(decisions)

    def _announce_holding(self, peer_id: str, holding: Holding) -> None:
        task = self._owned(holding.task_id)
        blob = task.blob if task else None
        geometry = (holding.size, holding.piece_size)
        if task is None or blob is None or (blob.meta.size, blob.meta.piece_size) != geometry:
            return  # unknown here, or cut differently: its pieces cannot be vouched for
        self._announce(task, peer_id, holding.pieces)

    def _announce(self, task: SeedTask, peer_id: str, pieces: list[int]) -> None:
        pieces = self._known_pieces(task, pieces)
        self._holds(task, peer_id, pieces)
        self._deliver(self.scheduler.announce(task.id, peer_id, pieces, self._clock.monotonic()))

    async def heartbeat(self, peer_id: str, beat: Heartbeat) -> None:
        now = self._clock.monotonic()
        if self.scheduler.knows_peer(peer_id):
            self.scheduler.peer_seen(peer_id, now)
        else:
            await self._ensure_peer(peer_id)  # with replicas, it may have joined another one
        self._heard.add(peer_id)
        if self.replication is not None:
            events = [
                (t, {"peer": peer_id, "dropped": True}) for t in beat.dropped_tasks if not self._owned(t)
            ]
            await self.replication.post(events)
        for task_id in beat.dropped_tasks:
            self._member_left(task_id, peer_id)

    def _member_left(self, task_id: str, peer_id: str) -> None:
        task = self._owned(task_id)
        if task is not None and self.replication is not None:
            task.batch.left(peer_id)
        self._deliver(self.scheduler.member_left(task_id, peer_id, self._clock.monotonic()))

    async def _ensure_peer(self, peer_id: str) -> None:
        """With replicas, a peer registered at another one is known from Redis."""
        if self.scheduler.knows_peer(peer_id):
            return
        if self.replication is None:
            raise UnknownPeer(peer_id)
        record = (await self.replication.get_peers([peer_id])).get(peer_id)
        if record is None:
            raise UnknownPeer(peer_id)
        if not self.scheduler.knows_peer(peer_id):
            self._join(parse_peer_registration(record))

    def leave(self, peer_id: str) -> None:
        self._deliver(self.scheduler.peer_left(peer_id, self._clock.monotonic()))

    # ------------------------------------------------------------------- tasks

    async def open_task(self, req: OpenTask) -> TaskInfo:
        """Create or join the task for a blob; waits until its geometry is known."""
        if self._stopping:
            raise ShuttingDown()
        await self._ensure_peer(req.peer_id)
        task_id = task_id_for(req.url, req.digest)
        if self.replication is not None:
            await self._claim(task_id, req)
        task = self.tasks.get(task_id)
        now = self._clock.monotonic()
        expired = now - (task.failed_at if task else now) >= self.config.failed_task_ttl
        lease = task.lease if task else None
        if task is not None and task.state is TaskState.FAILED and expired:
            del self.tasks[task_id]
            task = None
        if task is None:
            task = self._create_task(task_id, req, lease)
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
        if req.have and self.scheduler.knows_peer(req.peer_id) and self.scheduler.has_task(task_id):
            self._announce(task, req.peer_id, req.have)
        return task.info()

    async def sync(self, task_id: str, req: SyncRequest) -> SyncResponse:
        if self._stopping:
            raise ShuttingDown()
        task = self._owned(task_id)
        if task is None and self.replication is not None:
            owner = await self.replication.owner(task_id)
            if owner and owner != self.replication.url:
                raise NotOwner(task_id, owner)
        if task is None or task.blob is None:
            raise UnknownTask(task_id)  # the peer opens it again, here
        await self._ensure_peer(req.peer_id)
        self.metrics.syncs.inc()
        if task.state is TaskState.FAILED:
            return SyncResponse([], "failed", task.digest, task.error)
        count = task.blob.geometry.count
        for piece in (*req.finished, *(f.piece for f in req.failed)):
            if piece >= count:
                raise ProtocolError(f"piece {piece} out of range (the task has {count})")
        if req.finished:
            self._holds(task, req.peer_id, req.finished)
        failures = [Failure(f.piece, f.source, f.reason) for f in req.failed]
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

    def _create_task(self, task_id: str, req: OpenTask, lease: Lease | None = None) -> SeedTask:
        task = self._new_task(task_id, req, lease)
        self._start_fetch(task)
        return task

    def _new_task(self, task_id: str, req: OpenTask, lease: Lease | None) -> SeedTask:
        task = SeedTask(task_id, req.url, req.digest, dict(req.headers))
        task.lease = lease
        self.tasks[task_id] = task
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

    def _start_fetch(self, task: SeedTask, elsewhere: frozenset[int] = frozenset()) -> None:
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
        task.fetch = asyncio.create_task(fetch.run(task.blob, elsewhere), name=f"origin-{task.id[:20]}")
        task.fetch.add_done_callback(lambda done: self._fetch_done(task, done))

    def _fetch_done(self, task: SeedTask, done: asyncio.Task[None]) -> None:
        if done.cancelled():
            return
        exc = done.exception()
        if exc is None:
            assert task.blob is not None
            if task.blob.all_verified:  # after a takeover, peers may hold what we do not
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
        self._unschedule(task)
        self._forget_staged(task)
        if bad_data and task.blob is not None:
            self.store.remove(task.id)  # a lying upstream's bytes are not kept
            task.batch.reset = True  # nor passed on to another replica
        task.blob = None

    def _unschedule(self, task: SeedTask) -> None:
        """Take the task out of the scheduler; its long polls answer empty."""
        for peer_id in self.scheduler.remove_task(task.id):
            future = self._waiters.pop((task.id, peer_id), None)
            if future is not None and not future.done():
                future.set_result([])

    def _known_pieces(self, task: SeedTask, pieces: list[int]) -> list[int]:
        """The pieces whose sha256 we hold: only those can be checked by requesters."""
        return [p for p in pieces if task.sha(p) is not None]

    def _wire(self, task: SeedTask, assignment: Assignment) -> PieceAssignment:
        source = assignment.source
        seed = source == self.config.seed_id
        address = self._seed_address() if seed else self._addresses[source] or ""
        self.metrics.assignments.labels("seed" if seed else "peer").inc()
        sha = task.sha(assignment.piece)
        assert sha is not None
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
                if self.replication is not None:
                    await self._replica_tick()
            except Exception:  # a bug here must not stop timeouts for good
                log.exception("supernode tick failed")

    # ---------------------------------------------------------------- replicas

    def _owned(self, task_id: str) -> SeedTask | None:
        """The task, if this supernode may act for it (with replicas: holds its lease)."""
        task = self.tasks.get(task_id)
        if task is None or self.replication is None:
            return task
        if task.lease is None or task.lease.valid_until < self._clock.monotonic():
            self._drop_task(task, "its lease could not be renewed")
            return None
        return task

    async def _claim(self, task_id: str, req: OpenTask) -> None:
        """Own the task before acting for it: take its lease (NotOwner names the replica
        that holds it) and take over what an earlier owner left in Redis."""
        assert self.replication is not None
        while self._owned(task_id) is None:
            pending = self._claims.get(task_id)
            if pending is not None:  # another request is claiming it: wait, then look again
                await asyncio.shield(pending)
                continue
            self._claims[task_id] = asyncio.get_running_loop().create_future()
            try:
                lease = await self.replication.claim(task_id)
                record = await self.replication.load(task_id)
                holders = await self._live_holders(record) if record else {}
                self._take_over(task_id, req, lease, record, holders)
            finally:
                self._claims.pop(task_id).set_result(None)

    async def _live_holders(self, record: TaskRecord) -> dict[str, set[int]]:
        """The holders of an earlier owner's record that still heartbeat, made known here."""
        assert self.replication is not None
        seen = await self.replication.last_seen(list(record.holders))
        fresh = time.time() - self.scheduler.config.peer_timeout
        live = [p for p, t in seen.items() if t >= fresh]
        for peer_id, raw in (await self.replication.get_peers(live)).items():
            if not self.scheduler.knows_peer(peer_id):
                self._join(parse_peer_registration(raw))
        return {p: record.holders[p] for p in live if self.scheduler.knows_peer(p)}

    def _take_over(
        self,
        task_id: str,
        req: OpenTask,
        lease: Lease,
        record: TaskRecord | None,
        holders: dict[str, set[int]],
    ) -> None:
        if record is None:  # a new task
            self._create_task(task_id, req, lease)
            return
        task = self._new_task(task_id, req, lease)
        task.shas = record.sha
        task.digest = Digest.parse(record.digest) if record.digest else task.expected
        blob = self.store.get(task_id)
        if blob is None or (blob.meta.size, blob.meta.piece_size) != (record.size, record.piece_size):
            if blob is not None:
                self.store.remove(task_id)
            meta = BlobMeta(task_id, record.size, record.piece_size, record.digest, redact_url(req.url))
            blob = self.store.create(meta)
        for piece, data in record.staged.items():  # read from upstream before, held by no peer
            sha = record.sha.get(piece)
            if not blob.is_verified(piece) and sha and hashlib.sha256(data).hexdigest() == sha:
                writer = blob.writer(piece)
                writer.write(data)
                writer.commit(sha)
        task.staged = set(record.staged) & set(blob.verified_pieces())
        self._adopt(task, blob)
        now = self._clock.monotonic()
        held = set(blob.verified_pieces())
        for peer_id, pieces in holders.items():
            known = [p for p in pieces if p in task.shas]
            held.update(known)
            self._deliver(self.scheduler.announce(task_id, peer_id, known, now))
        missing = blob.geometry.count - len(held)
        if missing:
            self._start_fetch(task, frozenset(held - set(blob.verified_pieces())))
        else:
            task.state = TaskState.SEEDED
        log.info(
            "task %s taken over: %d pieces on %d peers, %d staged, %d to read from upstream",
            task_id,
            len(held) - len(task.staged),
            len(holders),
            len(task.staged),
            missing,
        )

    def _stage(self, task: SeedTask, piece: int, sha: str) -> None:
        """A piece read from upstream: keep its sha256, and its bytes until a peer holds
        it, where a successor replica finds them (within the staging budget)."""
        assert task.blob is not None
        task.batch.sha[piece] = sha
        length = task.blob.geometry.length(piece)
        if self._staged_bytes + length <= self.config.stage_limit:
            task.batch.staged[piece] = task.blob.read(task.blob.geometry.offset(piece), length)
            task.staged.add(piece)
            self._staged_bytes += length

    def _holds(self, task: SeedTask, peer_id: str, pieces: list[int]) -> None:
        """A peer holds these pieces now: log it for a successor; Redis need not keep
        their bytes any more."""
        if self.replication is None:
            return
        task.batch.holds(peer_id, pieces)
        for piece in task.staged.intersection(pieces):
            task.staged.discard(piece)
            task.batch.unstaged.add(piece)
            task.batch.staged.pop(piece, None)
            assert task.blob is not None
            self._staged_bytes -= task.blob.geometry.length(piece)

    def _forget_staged(self, task: SeedTask) -> None:
        """The task is no longer ours to serve: its staged pieces (left in Redis for a
        successor) no longer count against this replica's budget."""
        if task.blob is not None:
            self._staged_bytes -= sum(task.blob.geometry.length(p) for p in task.staged)
        task.staged.clear()

    def _drop_task(self, task: SeedTask, why: str) -> None:
        """Another replica may own the task now: stop acting for it."""
        log.warning("task %s: no longer its owner (%s)", task.id, why)
        task.lease = None
        if task.fetch is not None:
            task.fetch.cancel()
        if self.tasks.get(task.id) is task:
            del self.tasks[task.id]
        self._unschedule(task)
        self._forget_staged(task)

    async def _write_through(self) -> None:
        assert self.replication is not None
        writes = {}
        for task in self.tasks.values():
            if task.lease is not None:
                writes[task.id] = (task.lease, task.batch)
                task.batch = Batch()
        try:
            lost = await self.replication.write(writes)
        except RedisUnavailable:
            for task_id, (_, batch) in writes.items():  # kept, in order, for the next flush
                if task_id in self.tasks:
                    batch.merge_into(self.tasks[task_id].batch)
            raise
        for task_id in lost:
            if task_id in self.tasks:
                self._drop_task(self.tasks[task_id], "its lease was taken")

    async def _replica_tick(self) -> None:
        """Write through, renew leases, refresh liveness, read the inboxes."""
        assert self.replication is not None
        try:
            await self._write_through()
            heard, self._heard = self._heard, set()
            await self.replication.seen(heard)
            peers = [p for p in self.scheduler.peers() if p != self.config.seed_id]
            last = await self.replication.last_seen(peers)
            fresh, now = time.time() - 2 * self.config.heartbeat_interval, self._clock.monotonic()
            for peer_id, seen in last.items():
                if seen >= fresh and self.scheduler.knows_peer(peer_id):
                    self.scheduler.peer_seen(peer_id, now)  # heartbeats at another replica
            owned = [t.id for t in self.tasks.values() if t.lease is not None]
            for task_id, events in (await self.replication.take_inbox(owned)).items():
                await self._apply_inbox(task_id, events)
            if not self.redis_ok:
                log.warning("redis reachable again")
            self.redis_ok = True
        except RedisUnavailable as exc:
            if self.redis_ok:
                log.error("%s; tasks stay served until their leases lapse", exc)
            self.redis_ok = False
        for task_id in list(self.tasks):
            self._owned(task_id)  # drops the tasks whose lease lapsed

    async def _apply_inbox(self, task_id: str, events: list[dict[str, object]]) -> None:
        """Events other replicas received for a task we own."""
        for event in events:
            peer_id = str(event.get("peer"))
            try:
                if event.get("dropped"):
                    self._member_left(task_id, peer_id)
                elif event.get("holding") is not None:
                    await self._ensure_peer(peer_id)
                    self._announce_holding(peer_id, parse_holding(event["holding"]))
            except (UnknownPeer, UnknownTask, ProtocolError):
                continue  # gone since, or not ours any more

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
        task.batch.meta.update(size=str(size), piece_size=str(piece_size))
        service._adopt(task, blob)
        return blob

    def digest(self, digest: Digest) -> None:
        self._task.digest = digest
        self._task.batch.meta["digest"] = str(digest)

    def piece(self, index: int, sha: str) -> None:
        service, task = self._service, self._task
        if service.replication is not None:
            service._stage(task, index, sha)
        now = service._clock.monotonic()
        service._deliver(service.scheduler.piece_seeded(task.id, index, now))
