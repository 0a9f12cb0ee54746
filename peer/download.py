"""One blob's download on a peer: through the swarm, or straight from upstream.

``TaskDownload.run`` opens the task at the supernode, then loops on sync: report what
finished and failed, receive assignments, fetch pieces within the node's download slots,
verify each against the sha256 the supernode gave. When every piece is in, the whole
blob is hashed and compared to its digest before it is marked complete. If no supernode
answers (at the start, or for ``fallback_grace`` seconds mid-way), or the supernode could
not read the upstream and allows it, the rest comes from upstream directly, with the same
verification. Readers wait on ``wait_piece``; they never see a byte that is not verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from peer.config import PeerConfig
from peer.direct import DirectEvents, read_direct
from peer.flights import Flights
from peer.link import LinkError, SupernodeLink, SupernodeUnavailable
from peer.membership import Membership
from peer.metrics import PeerMetrics
from peer.slots import DownloadSlots
from swarmpull.core.blobs import BlobRequest, DownloadFailed
from swarmpull.core.clock import Clock
from swarmpull.core.digest import Digest
from swarmpull.core.protocol import OpenTask, SyncRequest, TaskInfo
from swarmpull.core.tasks import redact_url
from swarmpull.edges.origin import UpstreamError
from swarmpull.edges.store import BlobMeta, PieceStore, StoredBlob, StoreFull
from swarmpull.edges.transport import PieceTransport

log = logging.getLogger(__name__)


class DownloadState(enum.Enum):
    OPENING = "opening"
    RUNNING = "running"
    VERIFYING = "verifying"
    COMPLETE = "complete"
    FAILED = "failed"


@dataclass(slots=True)
class DownloadContext:
    """What a download needs from its daemon."""

    config: PeerConfig
    peer_id: str
    store: PieceStore
    session: aiohttp.ClientSession
    transport: PieceTransport
    link: SupernodeLink | None
    membership: Membership | None
    metrics: PeerMetrics
    clock: Clock
    slots: DownloadSlots
    direct_slots: asyncio.Semaphore
    uploads: Callable[[], int]  # uploads this node serves right now


class TaskDownload:
    def __init__(self, ctx: DownloadContext, request: BlobRequest) -> None:
        self._ctx = ctx
        self.request = request
        self.task_id = request.task_id
        self.state = DownloadState.OPENING
        self.error: DownloadFailed | None = None
        self.blob: StoredBlob | None = None
        self.direct = False  # fetched from upstream directly
        self._expected = request.digest
        self._changed = asyncio.Event()
        self._pins = contextlib.ExitStack()

    def __repr__(self) -> str:
        return f"<TaskDownload {self.task_id[:20]} {self.state.name}>"

    @property
    def store(self) -> PieceStore:
        return self._ctx.store

    # ------------------------------------------------------------------ readers

    async def wait_ready(self) -> StoredBlob:
        """The blob once its size is known; raises DownloadFailed."""
        while self.blob is None:
            await self._wait_change()
        return self.blob

    async def wait_piece(self, piece: int) -> None:
        """Returns once ``piece`` is verified; raises DownloadFailed."""
        blob = await self.wait_ready()
        while not blob.is_verified(piece):
            await self._wait_change()

    async def wait_complete(self) -> StoredBlob:
        """The blob once its whole digest is verified; raises DownloadFailed."""
        while self.state is not DownloadState.COMPLETE:
            await self._wait_change()
        assert self.blob is not None
        return self.blob

    async def _wait_change(self) -> None:
        if self.error is not None:
            raise self.error
        event = self._changed
        await event.wait()
        if self.error is not None:
            raise self.error

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -------------------------------------------------------------------- run

    async def run(self) -> None:
        ctx = self._ctx
        try:
            blob = ctx.store.get(self.task_id)
            if blob is not None:
                self._adopt(blob)
            if blob is None or not blob.complete:
                await self._fetch()
                await self._finish()
            self.state = DownloadState.COMPLETE
            ctx.metrics.blobs.labels("complete").inc()
        except DownloadFailed as exc:
            self._failed(exc)
        except StoreFull as exc:
            self._failed(DownloadFailed(str(exc), cache_full=True))
        except asyncio.CancelledError:
            self._failed(DownloadFailed("download cancelled (the daemon is stopping)"))
            raise
        except Exception as exc:
            log.exception("download of %s crashed", self.task_id)
            self._failed(DownloadFailed(f"internal error: {type(exc).__name__}: {exc}"))
        finally:
            self._pins.close()
            self._notify()

    def _failed(self, exc: DownloadFailed) -> None:
        self.state = DownloadState.FAILED
        self.error = exc
        self._ctx.metrics.blobs.labels("failed").inc()
        log.warning("download of %s failed: %s", redact_url(self.request.url), exc)

    async def _fetch(self) -> None:
        ctx = self._ctx
        if ctx.link is None or ctx.membership is None:
            await self._direct("no supernode configured")
            return
        try:
            info = await self._open()
        except SupernodeUnavailable as exc:
            # Everyone sees the outage at once: spread the fallbacks, then try once more.
            await asyncio.sleep(random.uniform(0, ctx.config.direct_jitter))
            try:
                info = await self._open()
            except SupernodeUnavailable:
                await self._direct(str(exc))
                return
        except LinkError as exc:
            if exc.code == "UPSTREAM_ERROR" and exc.direct:
                await self._direct(f"the supernode could not read the upstream: {exc}")
                return
            raise DownloadFailed(str(exc), exc.upstream_status) from None
        self._prepare(info)
        await self._swarm()

    async def _open(self) -> TaskInfo:
        ctx = self._ctx
        assert ctx.link is not None and ctx.membership is not None
        for _ in range(3):
            await ctx.membership.ensure_registered()
            have = self.blob.verified_pieces() if self.blob is not None else []
            req = OpenTask(ctx.peer_id, self.request.url, self.request.digest, self.request.headers, have)
            try:
                return await ctx.link.open_task(req, ctx.config.open_timeout)
            except LinkError as exc:
                if exc.code != "UNKNOWN_PEER":
                    raise
                ctx.membership.lost()
        raise SupernodeUnavailable("the supernode keeps forgetting this peer")

    def _prepare(self, info: TaskInfo) -> None:
        """Make the store's blob match the task's geometry."""
        if info.task_id != self.task_id:
            raise DownloadFailed(f"supernode answered for task {info.task_id}, not {self.task_id}")
        if info.digest is not None:
            self._expect(info.digest)
        blob = self.blob
        if blob is not None and (blob.meta.size, blob.meta.piece_size) != (info.size, info.piece_size):
            self._pins.close()
            self._pins = contextlib.ExitStack()
            self._ctx.store.remove(self.task_id)
            self.blob = blob = None
        if blob is None:
            self._create(info.size, info.piece_size)

    def _create(self, size: int, piece_size: int) -> StoredBlob:
        meta = BlobMeta(
            self.task_id,
            size,
            piece_size,
            digest=str(self._expected) if self._expected else None,
            url=redact_url(self.request.url),
        )
        blob = self._ctx.store.create(meta)
        self._adopt(blob)
        return blob

    def _adopt(self, blob: StoredBlob) -> None:
        self._pins.enter_context(self._ctx.store.pinned(blob))
        self.blob = blob
        self.state = DownloadState.RUNNING
        self._notify()

    def _expect(self, digest: Digest) -> None:
        if self._expected is not None and digest != self._expected:
            raise DownloadFailed(f"supernode reports digest {digest}, expected {self._expected}")
        self._expected = digest

    # -------------------------------------------------------------- the swarm

    async def _swarm(self) -> None:
        ctx = self._ctx
        config = ctx.config
        assert self.blob is not None and ctx.link is not None
        flights = self._flights(self.blob)
        unreachable_since: float | None = None
        try:
            while not flights.blob.all_verified:
                want = flights.want()
                if want == 0 and not len(flights):
                    await ctx.slots.wait_free(self.request.priority)
                    continue
                wait = 0.0 if len(flights) else config.long_poll
                outcomes = flights.take_outcomes()
                req = SyncRequest(
                    ctx.peer_id,
                    outcomes.finished,
                    outcomes.failed,
                    want,
                    wait,
                    outcomes.timings,
                    ctx.uploads(),
                )
                started = ctx.clock.monotonic()
                try:
                    resp = await ctx.link.sync(self.task_id, req)
                except SupernodeUnavailable as exc:
                    flights.restore(outcomes)
                    now = ctx.clock.monotonic()
                    unreachable_since = unreachable_since or now
                    if now - unreachable_since >= config.fallback_grace:
                        await flights.cancel()
                        await self._direct(str(exc))
                        return
                    await flights.collect(timeout=1.0)
                    continue
                except LinkError as exc:
                    flights.restore(outcomes)
                    with contextlib.suppress(SupernodeUnavailable):  # handled at the next sync
                        if await self._recover(exc):
                            await flights.cancel()
                            flights = self._flights(self.blob)
                    continue
                unreachable_since = None
                if resp.state == "failed":
                    raise DownloadFailed(resp.error or "the supernode failed this task")
                if resp.digest is not None:
                    self._expect(resp.digest)
                for assignment in resp.assignments:
                    flights.start(assignment)
                if len(flights):
                    # Each finished transfer brings a sync; between those, poll only in the
                    # endgame (polls cost the supernode a request each, thousands of peers).
                    poll = config.poll_interval if flights.at_the_end() else 5 * config.poll_interval
                    await flights.collect(timeout=poll)
                elif not resp.assignments and ctx.clock.monotonic() - started < 0.1:
                    await asyncio.sleep(config.poll_interval)  # an empty answer without waiting
        finally:
            await flights.cancel()
        outcomes = flights.take_outcomes()
        with contextlib.suppress(LinkError, SupernodeUnavailable):
            await ctx.link.sync(
                self.task_id,
                SyncRequest(ctx.peer_id, outcomes.finished, outcomes.failed, timings=outcomes.timings),
            )

    def _flights(self, blob: StoredBlob | None) -> Flights:
        ctx = self._ctx
        assert blob is not None
        return Flights(
            blob,
            ctx.transport,
            ctx.slots,
            ctx.metrics,
            ctx.clock,
            self.request.priority,
            self._notify,
            ctx.config.download_limit,
            ctx.config.piece_pace,
        )

    async def _recover(self, exc: LinkError) -> bool:
        """The supernode refused a sync: re-register, or re-open the task (True: the blob
        was re-created), or give up."""
        ctx = self._ctx
        assert ctx.membership is not None
        if exc.code == "UNKNOWN_PEER":
            ctx.membership.lost()
            await ctx.membership.ensure_registered()
            return False
        if exc.code == "UNKNOWN_TASK":  # the supernode restarted, or failed the task
            before = self.blob
            try:
                self._prepare(await self._open())
            except LinkError as again:
                raise DownloadFailed(str(again), again.upstream_status) from None
            return self.blob is not before
        raise DownloadFailed(f"supernode refused: {exc}") from None

    # ------------------------------------------------------------- direct

    async def _direct(self, why: str) -> None:
        """Fetch what is missing straight from upstream, verified against the digest."""
        ctx = self._ctx
        async with ctx.direct_slots:
            self.direct = True
            ctx.metrics.fallbacks.inc()
            log.warning("fetching %s directly from upstream: %s", redact_url(self.request.url), why)
            events = DirectEvents(self._create, self._expect)
            try:
                await read_direct(
                    ctx.session,
                    ctx.config,
                    ctx.metrics,
                    self.request.url,
                    self.request.headers,
                    self._expected,
                    self.blob,
                    events,
                )
            except UpstreamError as exc:
                if exc.definitive and self.blob is not None:  # what we hold does not fit upstream
                    ctx.store.remove(self.task_id)
                raise DownloadFailed(str(exc), exc.status) from None
        self._notify()

    # ------------------------------------------------------------- finish

    async def _finish(self) -> None:
        blob = self.blob
        assert blob is not None
        self.state = DownloadState.VERIFYING
        actual = Digest(await asyncio.to_thread(blob.sha256_of_data))
        if self._expected is not None and actual != self._expected:
            self._ctx.store.remove(self.task_id)
            raise DownloadFailed(f"blob has digest {actual}, expected {self._expected}")
        await asyncio.to_thread(blob.mark_complete, str(actual))
