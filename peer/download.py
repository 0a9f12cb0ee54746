"""One blob's download on a peer: through the swarm, or straight from upstream.

``TaskDownload.run`` opens the task at the supernode, then loops on sync: report what
finished and failed, receive assignments, fetch pieces with bounded concurrency, verify
each against the sha256 the supernode gave. When every piece is in, the whole blob is
hashed and compared to its digest before it is marked complete. If no supernode answers
(at the start, or for ``fallback_grace`` seconds mid-way) the rest comes from upstream
directly, with the same verification. Readers wait on ``wait_piece``; they never see a
byte that is not verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from dataclasses import dataclass, field

import aiohttp

from peer.config import PeerConfig
from peer.link import LinkError, SupernodeLink, SupernodeUnavailable
from peer.membership import Membership
from peer.metrics import PeerMetrics
from swarmpull.clock import Clock
from swarmpull.digest import Digest
from swarmpull.geometry import choose_piece_size
from swarmpull.protocol import OpenTask, PieceAssignment, PieceFailure, SyncRequest, TaskInfo
from swarmpull.store import (
    BlobMeta,
    PieceCorrupt,
    PieceStore,
    StoredBlob,
    StoreFull,
    WriteCancelled,
)
from swarmpull.tasks import check_upstream_url, redact_url, task_id_for
from swarmpull.transport import PieceFetchError, PieceTransport
from swarmpull.upstream import UpstreamError, UpstreamFetch

log = logging.getLogger(__name__)


class DownloadState(enum.Enum):
    OPENING = "opening"
    RUNNING = "running"
    VERIFYING = "verifying"
    COMPLETE = "complete"
    FAILED = "failed"


class DownloadFailed(Exception):
    """The blob cannot be had. ``status`` is the upstream's HTTP status when it said no;
    ``cache_full`` says the local store had no room."""

    def __init__(self, message: str, status: int | None = None, cache_full: bool = False):
        super().__init__(message)
        self.status = status
        self.cache_full = cache_full


@dataclass(frozen=True, slots=True)
class BlobRequest:
    """A blob to fetch: its upstream URL, its digest when known, the headers to read it."""

    url: str
    digest: Digest | None = None
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # secrets

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", check_upstream_url(self.url))

    @property
    def task_id(self) -> str:
        return task_id_for(self.url, self.digest)


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
            await self._direct(str(exc))
            return
        except LinkError as exc:
            status = exc.upstream_status
            if exc.code == "UPSTREAM_ERROR" and (status is None or status >= 500 or status in (408, 429)):
                await self._direct(f"the supernode could not read the upstream: {exc}")
                return
            raise DownloadFailed(str(exc), status) from None
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
        assert self.blob is not None and ctx.link is not None and ctx.membership is not None
        blob = self.blob
        flights: dict[asyncio.Task[PieceFailure | None], PieceAssignment] = {}
        finished: list[int] = []
        failed: list[PieceFailure] = []
        unreachable_since: float | None = None
        try:
            while not blob.all_verified:
                want = config.download_slots - len(flights)
                wait = 0.0 if flights else config.long_poll
                req = SyncRequest(ctx.peer_id, finished, failed, want, wait)
                started = ctx.clock.monotonic()
                try:
                    resp = await ctx.link.sync(self.task_id, req)
                except SupernodeUnavailable as exc:
                    now = ctx.clock.monotonic()
                    unreachable_since = unreachable_since or now
                    if now - unreachable_since >= config.fallback_grace:
                        await _cancel(flights)
                        await self._direct(str(exc))
                        return
                    await self._collect(flights, finished, failed, timeout=1.0)
                    continue
                except LinkError as exc:
                    with contextlib.suppress(SupernodeUnavailable):  # handled at the next sync
                        await self._recover(exc)
                    blob = self.blob
                    assert blob is not None
                    continue
                unreachable_since = None
                finished, failed = [], []
                if resp.state == "failed":
                    raise DownloadFailed(resp.error or "the supernode failed this task")
                if resp.digest is not None:
                    self._expect(resp.digest)
                for assignment in resp.assignments:
                    if blob.is_verified(assignment.piece):
                        finished.append(assignment.piece)
                    else:
                        flights[asyncio.create_task(self._fetch_piece(assignment))] = assignment
                if flights:
                    await self._collect(flights, finished, failed, timeout=config.poll_interval)
                elif not resp.assignments and ctx.clock.monotonic() - started < 0.1:
                    await asyncio.sleep(config.poll_interval)  # an empty answer without waiting
        finally:
            await _cancel(flights)
        with contextlib.suppress(LinkError, SupernodeUnavailable):
            await ctx.link.sync(self.task_id, SyncRequest(ctx.peer_id, finished, failed))

    async def _recover(self, exc: LinkError) -> None:
        """The supernode refused a sync: re-register, re-open the task, or give up."""
        ctx = self._ctx
        assert ctx.membership is not None
        if exc.code == "UNKNOWN_PEER":
            ctx.membership.lost()
            await ctx.membership.ensure_registered()
        elif exc.code == "UNKNOWN_TASK":  # the supernode restarted, or failed the task
            try:
                self._prepare(await self._open())
            except LinkError as again:
                raise DownloadFailed(str(again), again.upstream_status) from None
        else:
            raise DownloadFailed(f"supernode refused: {exc}") from None

    async def _collect(
        self,
        flights: dict[asyncio.Task[PieceFailure | None], PieceAssignment],
        finished: list[int],
        failed: list[PieceFailure],
        timeout: float,
    ) -> None:
        """Wait for transfers to end (at most ``timeout``) and sort their outcomes."""
        if not flights:
            await asyncio.sleep(timeout)
            return
        done, _ = await asyncio.wait(flights, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            assignment = flights.pop(task)
            if task.cancelled():  # an endgame twin that lost the race
                continue
            failure = task.result()
            if failure is None:
                finished.append(assignment.piece)
                for other, twin in list(flights.items()):  # endgame duplicates: first wins
                    if twin.piece == assignment.piece:
                        other.cancel()
            else:
                failed.append(failure)

    async def _fetch_piece(self, assignment: PieceAssignment) -> PieceFailure | None:
        """Fetch and verify one piece; None on success, else the failure to report."""
        ctx = self._ctx
        assert self.blob is not None
        try:
            writer = self.blob.writer(assignment.piece)
        except WriteCancelled:
            return None
        kind = "seed" if assignment.seed else "peer"
        try:
            await ctx.transport.fetch(assignment.address, self.task_id, assignment.piece, writer)
            writer.commit(assignment.sha256)
        except PieceFetchError as exc:
            writer.abort()
            ctx.metrics.pieces.labels("failed").inc()
            log.debug("piece %d from %s: %s", assignment.piece, assignment.source, exc)
            return PieceFailure(assignment.piece, assignment.source, exc.reason)
        except PieceCorrupt as exc:
            writer.abort()
            ctx.metrics.pieces.labels("corrupt").inc()
            log.warning("corrupt piece from %s (%s): %s", assignment.source, assignment.address, exc)
            return PieceFailure(assignment.piece, assignment.source, "corrupt")
        except WriteCancelled:
            return None
        except BaseException:
            writer.abort()
            raise
        ctx.metrics.pieces.labels("verified").inc()
        ctx.metrics.download_bytes.labels(kind).inc(writer.length)
        self._notify()
        return None

    # ------------------------------------------------------------- direct

    async def _direct(self, why: str) -> None:
        """Fetch what is missing straight from upstream, verified against the digest."""
        ctx = self._ctx
        self.direct = True
        ctx.metrics.fallbacks.inc()
        log.warning("fetching %s directly from upstream: %s", redact_url(self.request.url), why)
        events = _DirectEvents(self)
        fetch = UpstreamFetch(
            ctx.session,
            self.request.url,
            lambda: self.request.headers,
            self._expected,
            events,
            ctx.config.upstream,
            on_bytes=ctx.metrics.download_bytes.labels("upstream").inc,
            defer=True,
        )
        try:
            await fetch.run(self.blob)
        except UpstreamError as exc:
            if exc.definitive and self.blob is not None:  # what we hold does not fit upstream
                ctx.store.remove(self.task_id)
            raise DownloadFailed(str(exc), exc.status) from None
        assert self.blob is not None
        for piece, sha in events.pieces.items():  # the whole digest matched: release them
            self.blob.record(piece, sha)
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


class _DirectEvents:
    """Collects the pieces of a direct fetch; they are recorded once the digest matched."""

    def __init__(self, download: TaskDownload) -> None:
        self._download = download
        self.pieces: dict[int, str] = {}

    def geometry(self, size: int) -> StoredBlob:
        return self._download._create(size, choose_piece_size(size))

    def digest(self, digest: Digest) -> None:
        self._download._expect(digest)

    def piece(self, index: int, sha: str) -> None:
        self.pieces[index] = sha


async def _cancel(flights: dict[asyncio.Task[PieceFailure | None], PieceAssignment]) -> None:
    for task in flights:
        task.cancel()
    await asyncio.gather(*flights, return_exceptions=True)
    flights.clear()
