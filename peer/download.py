"""One blob's download on a peer: through the swarm, or straight from upstream.

``TaskDownload.run`` opens the task at the supernode (which answers with the blob's
geometry, the keys its piece statements are signed with, and this peer's parents), then
fetches through the swarm (``peer.swarm``). While pieces land, a hashing task feeds them
in order to the whole blob's sha256 (``InOrderDigest``), off the event loop; when every
piece is in, that digest is compared to the expected one before the blob is marked
complete, so no byte is read twice for it. If no supernode answers
(at the start, or for ``fallback_grace`` seconds with the swarm giving nothing), or the
supernode could not read the upstream and allows it, the rest comes from upstream
directly, with the same verification. Readers wait on ``wait_piece``; they never see a
byte that is not verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

import aiohttp

from peer.config import PeerConfig
from peer.control import Control
from peer.direct import read_direct
from peer.link import LinkError, SupernodeUnavailable
from peer.metrics import PeerMetrics
from peer.slots import DownloadSlots
from peer.swarm import SupernodeGone, SwarmFetch, TaskForgotten
from peer.torrents import TorrentTransport, TorrentUnavailable
from swarmpull.core.bitfield import to_text
from swarmpull.core.blobs import BlobRequest, DownloadFailed
from swarmpull.core.clock import Clock
from swarmpull.core.digest import Digest
from swarmpull.core.events import EventSink
from swarmpull.core.protocol import OpenTask, TaskInfo
from swarmpull.core.signing import PieceStatement, SignatureError, TaskKeys, keys_from_json
from swarmpull.core.tasks import redact_url
from swarmpull.edges.origin import UpstreamError
from swarmpull.edges.store import (
    BlobMeta,
    InOrderDigest,
    PieceStore,
    StoredBlob,
    StoreError,
    StoreFull,
    StoreWriteError,
)
from swarmpull.edges.transport import PieceClient

log = logging.getLogger(__name__)

DAEMON_STOPPING = "the daemon is stopping"  # why a run is cancelled, unless told otherwise


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
    client: PieceClient
    control: Control | None
    metrics: PeerMetrics
    clock: Clock
    slots: DownloadSlots
    direct_slots: asyncio.Semaphore
    events: EventSink
    torrents: TorrentTransport | None = None


class TaskDownload:
    def __init__(self, ctx: DownloadContext, request: BlobRequest) -> None:
        self._ctx = ctx
        self.request = request
        self.task_id = request.task_id
        self.state = DownloadState.OPENING
        self.error: DownloadFailed | None = None
        self.blob: StoredBlob | None = None
        self.direct = False  # fetched from upstream directly
        self.bypassed: str | None = None  # why the swarm was bypassed, when it was
        self.over_http = False  # its pieces are written by the HTTP swarm (no torrent may write them)
        # verified bytes by source: local, bittorrent, peer, seed, upstream
        self.sources: Counter[str] = Counter()
        self.requesters = 0  # clients reading it who may leave (``PeerDaemon.requested``)
        self.kept = False  # asked for by someone who stays (``PeerDaemon.ensure``): never abandoned
        self.stopping_because = DAEMON_STOPPING  # said when the run is cancelled
        self._expected = request.digest
        self._changed = asyncio.Event()
        self._pins = contextlib.ExitStack()
        self._landed = asyncio.Event()  # set at every change; the hashing task waits on it
        self._whole: InOrderDigest | None = None
        self._hashing: asyncio.Task[None] | None = None
        self._untrusted = False  # the pieces held are to be dropped when the run ends
        self._awaited: Counter[int] = Counter()  # piece -> readers waiting on it

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
        """Returns once ``piece`` is verified; raises DownloadFailed. While a reader
        waits on a piece, the swarm fetches it before the rarest (``awaited``)."""
        blob = await self.wait_ready()
        if blob.is_verified(piece):
            return
        self._awaited[piece] += 1
        try:
            while not blob.is_verified(piece):
                await self._wait_change()
        finally:
            self._awaited[piece] -= 1
            if not self._awaited[piece]:
                del self._awaited[piece]

    def awaited(self) -> int:
        """The pieces readers wait on, as a bit field."""
        return sum(1 << piece for piece in self._awaited)

    async def wait_complete(self) -> StoredBlob:
        """The blob once its whole digest is verified; raises DownloadFailed."""
        while self.state is not DownloadState.COMPLETE or self.blob is None:
            await self._wait_change()
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
        self._landed.set()

    def summary(self) -> dict[str, Any]:
        """What it fetched from where, for ``swarmpull get``'s closing line."""
        return {
            "task_id": self.task_id,
            "state": self.state.value,
            "size": self.blob.meta.size if self.blob is not None else None,
            "sources": dict(self.sources),
            "bypassed": self.bypassed,
            "error": str(self.error) if self.error is not None else None,
        }

    # -------------------------------------------------------------------- run

    async def run(self) -> None:
        ctx = self._ctx
        try:
            blob = ctx.store.get(self.task_id)
            if blob is not None:
                self._adopt(blob)
                self.sources["local"] = _held_bytes(blob)
            if blob is None or not blob.complete:
                blob = await self._by_torrent() or blob
            if blob is None or not blob.complete:
                self.over_http = True
                started = ctx.clock.monotonic()
                url = redact_url(self.request.url)
                ctx.events.emit("task_opened", task=self.task_id, url=url, digest=_text(self.request.digest))
                await self._fetch()
                await self._finish()
                size = self.blob.meta.size if self.blob else None
                seconds = round(ctx.clock.monotonic() - started, 4)
                ctx.events.emit("task_finished", task=self.task_id, ok=True, size=size, seconds=seconds)
            self.state = DownloadState.COMPLETE
            ctx.metrics.blobs.labels("complete").inc()
        except DownloadFailed as exc:
            self._failed(exc)
        except StoreFull as exc:
            self._failed(DownloadFailed(str(exc), cache_full=True))
        except StoreWriteError as exc:
            self._failed(DownloadFailed(f"the disk refused the blob: {exc}", cache_full=True))
        except asyncio.CancelledError:
            stopping = self.stopping_because == DAEMON_STOPPING
            why = DownloadFailed(f"download cancelled: {self.stopping_because}", stopping=stopping)
            self._failed(why, abandoned=not stopping)
            raise
        except Exception as exc:
            log.exception("download of %s crashed", self.task_id)
            self._failed(DownloadFailed(f"internal error: {type(exc).__name__}: {exc}"))
        finally:
            await self._stop_hashing()
            if self._untrusted:
                self._discard()
            self._pins.close()
            self._notify()

    def refuse(self, exc: DownloadFailed) -> None:
        """End a download that never runs (the daemon is stopping) with ``exc``."""
        self._failed(exc)
        self._notify()

    def _failed(self, exc: DownloadFailed, abandoned: bool = False) -> None:
        """The run ended without the blob. ``abandoned``: nobody wants it any more (every
        client left), which is no failure to alert on: counted and logged apart."""
        self.state = DownloadState.FAILED
        self.error = exc
        self._ctx.metrics.blobs.labels("abandoned" if abandoned else "failed").inc()
        self._ctx.events.emit("task_finished", task=self.task_id, ok=False, error=str(exc))
        blob = self.blob
        if exc.untrusted and blob is not None and not blob.complete:
            self._untrusted = True  # dropped once the hashing task stopped reading it
        elif exc.cache_full and blob is not None and not blob.complete:
            self._ctx.store.remove(self.task_id)  # its space back at once
        if abandoned:
            log.info("download of %s abandoned: %s", redact_url(self.request.url), exc)
        else:
            log.warning("download of %s failed: %s", redact_url(self.request.url), exc)

    def _discard(self) -> None:
        """Drop every piece held of this blob, and tell the supernode we hold none.

        The seed signs and serves each piece as it reads it (the pipelined start); only the
        last piece waits for the whole digest. So when a task fails, or the blob's whole
        digest does not match, the pieces we verified against their statements may still
        be a liar's bytes. They are deleted, never reused: the next pull of the blob starts
        from nothing, and a parent asked for them answers ``missing``. This is the one
        place that decides it (rather than a fetch id in every statement): a failed task
        is dropped by the supernode and opened afresh, so statements of the failed read
        are never relayed by an honest peer again."""
        self._pins.close()
        self._pins = contextlib.ExitStack()
        self._ctx.store.remove(self.task_id)
        if self._ctx.control is not None:
            self._ctx.control.dropped(self.task_id)

    async def _by_torrent(self) -> StoredBlob | None:
        """The blob over BitTorrent, when this node pulls that way (or a preheat is fetching
        it so already) and the seed offers a torrent for it, read as it lands; None: the
        HTTP swarm it is."""
        ctx = self._ctx
        if ctx.torrents is None or self.request.digest is None:
            return None
        if ctx.config.blob_transport != "bittorrent" and not ctx.torrents.fetching(self.task_id):
            return None
        before = _held_bytes(self.blob) if self.blob is not None else 0
        fetch = ctx.torrents.fetch(self.task_id, self.request.priority)
        try:
            landing = await ctx.torrents.receiving(self.task_id, self._notify)
            if landing is not None and landing is not self.blob:
                self._adopt(landing)  # readers follow its pieces as they land
            blob = await asyncio.shield(fetch)
        except TorrentUnavailable as exc:
            log.info("no torrent for %s, pulling over HTTP: %s", self.task_id, exc)
            return None
        except (DownloadFailed, asyncio.CancelledError) as exc:
            stopped = isinstance(exc, asyncio.CancelledError)  # the shared fetch, or this pull
            if stopped and (not fetch.cancelled() or _cancelling()):
                raise
            if isinstance(exc, DownloadFailed) and (exc.untrusted or exc.cache_full or exc.stopping):
                raise
            if self.blob is not None and self.blob.removed:
                raise DownloadFailed(f"{self.task_id} left the store during its torrent") from None
            # libtorrent gave up, or its fetch was stopped (the torrent is out of the
            # session, nothing writes the blob): the HTTP swarm fetches what it did not,
            # the checked pieces kept.
            why = "it was stopped" if stopped else str(exc)
            log.warning("the torrent of %s ended, pulling the rest over HTTP: %s", self.task_id, why)
            if self.blob is not None:
                self.sources["bittorrent"] = _held_bytes(self.blob) - before
            return None
        if blob is not self.blob:
            self._adopt(blob)
        self.sources["bittorrent"] = _held_bytes(blob) - before
        return blob

    async def _fetch(self) -> None:
        ctx = self._ctx
        if ctx.control is None:
            await self._direct("no supernode configured")
            return
        for _ in range(3):
            info = await self._open_or_fall_back()
            if info is None:
                return  # read directly
            self._prepare(info)
            await self._drop_unvouched(info)
            blob = self.blob
            if blob is None:
                raise DownloadFailed("no blob to download into")
            await self._hash_while_landing(blob)
            swarm = SwarmFetch(
                blob,
                info,
                ctx.control,
                ctx.client,
                ctx.slots,
                ctx.metrics,
                ctx.clock,
                self.request.priority,
                ctx.config.policy,
                ctx.config.download_limit,
                self._notify,
                ctx.config.fallback_grace,
                ctx.events,
                self.awaited,
            )
            try:
                await swarm.run()
            except TaskForgotten:
                continue  # the supernode restarted, or the owner changed: open it again
            except SupernodeGone as exc:
                await self._direct(str(exc))
                return
            finally:
                self.sources.update(swarm.received)
            if swarm.digest is not None:
                self._expect(Digest.parse(swarm.digest))
            return
        raise DownloadFailed("the supernode keeps forgetting this task")

    async def _open_or_fall_back(self) -> TaskInfo | None:
        """The task's info; None once it was read directly instead. While the task's
        owner moves (a replica died and its lease has not lapsed yet) it keeps asking."""
        ctx = self._ctx
        give_up = ctx.clock.monotonic() + ctx.config.fallback_grace
        unanswered = 0
        while True:
            try:
                return await self._open()
            except SupernodeUnavailable as exc:
                unanswered += 1
                if unanswered > 1:
                    await self._direct(str(exc))
                    return None
                # Everyone sees the outage at once: spread the fallbacks, then try once more
                # (whatever that answers is handled here too: a moving owner is waited for).
                await asyncio.sleep(random.uniform(0, ctx.config.direct_jitter))
            except LinkError as exc:
                if exc.code == "UPSTREAM_ERROR" and exc.direct:
                    await self._direct(f"the supernode could not read the upstream: {exc}")
                    return None
                if exc.code == "PULL_DENIED":
                    raise DownloadFailed(str(exc), exc.upstream_status, denied=True) from None
                transient = exc.code in (
                    "NOT_OWNER",
                    "CLUSTER_UNAVAILABLE",
                    "SHUTTING_DOWN",
                    "TOO_MANY_TASKS",
                )
                if not transient:  # a failed or refused task: what we hold of it is suspect
                    untrusted = exc.code in ("UPSTREAM_ERROR", "UPSTREAM_REFUSED")
                    raise DownloadFailed(str(exc), exc.upstream_status, untrusted=untrusted) from None
                if ctx.clock.monotonic() >= give_up:
                    await self._direct(f"the task has no reachable owner: {exc}")
                    return None
                await asyncio.sleep(0.5 + random.random())

    async def _open(self) -> TaskInfo:
        ctx = self._ctx
        if ctx.control is None:
            raise SupernodeUnavailable("no supernode configured")
        blob = self.blob
        have = to_text(blob.have, blob.geometry.count) if blob is not None and blob.have else ""
        req = OpenTask(ctx.peer_id, self.request.url, self.request.digest, self.request.headers, have)
        info = await ctx.control.open(req, ctx.config.open_timeout)
        self._ctx.metrics.opens.inc()
        return info

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
            self.sources.clear()
        if blob is None:
            self._create(info.size, info.piece_size)

    async def _drop_unvouched(self, info: TaskInfo) -> None:
        """Pieces held from before this open whose statements no key of the task signed are
        dropped, and the blob starts afresh: they came from a read the supernode no longer
        vouches for (one that failed its digest: the read after it signs with a key of its
        own), or from a supernode that forgot the task. Kept, they would fail this blob's
        whole digest again, and their statements would be refused by every requester."""
        blob = self.blob
        if blob is None or blob.complete or not blob.statements:
            return
        keys = TaskKeys()
        try:
            for key in keys_from_json(info.keys):
                keys.add(key)
        except SignatureError:
            return  # the swarm fetch says so, and trusts no piece
        statements = list(blob.statements.values())
        if await asyncio.to_thread(_all_signed, keys, self.task_id, statements):
            return
        log.warning("%s: no key of the task signed the pieces held; starting afresh", self.task_id)
        await self._stop_hashing()  # it may be reading the file
        self._pins.close()
        self._pins = contextlib.ExitStack()
        self._ctx.store.remove(self.task_id)
        self.blob = None
        self.sources.clear()
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

    # ------------------------------------------------------------- direct

    async def _direct(self, why: str) -> None:
        """Fetch what is missing straight from upstream, verified against the digest."""
        ctx = self._ctx
        async with ctx.direct_slots:
            self.direct = True
            self.bypassed = why
            held = _held_bytes(self.blob) if self.blob is not None else 0
            ctx.metrics.fallbacks.inc()
            ctx.events.emit("fallback", task=self.task_id, reason=why)
            log.warning("fetching %s directly from upstream: %s", redact_url(self.request.url), why)
            read = [0]
            try:
                blob = await read_direct(
                    ctx.session,
                    ctx.config,
                    ctx.metrics,
                    self.request,
                    self._expected,
                    self.blob,
                    self._create,
                    self._expect,
                    read,
                )
            except UpstreamError as exc:
                if exc.definitive and self.blob is not None:  # what we hold does not fit upstream
                    ctx.store.remove(self.task_id)
                raise DownloadFailed(str(exc), exc.status, untrusted=exc.bad_data) from None
            finally:
                ctx.events.emit("upstream_read", task=self.task_id, bytes=read[0])
            if self.blob is None:
                self._adopt(blob)
            self.sources["upstream"] += _held_bytes(blob) - held
        self._notify()

    # ------------------------------------------------------------- finish

    async def _hash_while_landing(self, blob: StoredBlob) -> None:
        """Start the hashing task for ``blob`` (a new one if the blob was replaced)."""
        if self._whole is not None and self._whole.blob is blob:
            return
        await self._stop_hashing()
        self._whole = InOrderDigest(blob)
        name = f"hash-{self.task_id[:20]}"
        self._hashing = asyncio.create_task(self._hash_in_order(self._whole), name=name)

    async def _hash_in_order(self, whole: InOrderDigest) -> None:
        """The one owner of ``whole``: feeds it each run of verified pieces, in a thread."""
        while not whole.done:
            self._landed.clear()
            if whole.ready:
                await asyncio.to_thread(whole.advance)
            else:
                await self._landed.wait()

    async def _stop_hashing(self) -> None:
        task, self._hashing = self._hashing, None
        if task is not None and not task.done():
            task.cancel()
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    async def _whole_digest(self, blob: StoredBlob) -> Digest:
        """The blob's sha256: from the hashing task when it followed this blob, else read
        from the file (a blob fetched directly, or complete before we started)."""
        whole, task = self._whole, self._hashing
        if whole is not None and whole.blob is blob and task is not None:
            self._landed.set()
            try:
                await asyncio.shield(task)
            except StoreError as exc:
                raise DownloadFailed(f"hashing the blob: {exc}") from None
            return Digest(whole.hexdigest())
        return Digest(await asyncio.to_thread(blob.sha256_of_data))

    async def _finish(self) -> None:
        blob = self.blob
        if blob is None:
            raise DownloadFailed("nothing was downloaded")
        self.state = DownloadState.VERIFYING
        actual = await self._whole_digest(blob)
        if self._expected is not None and actual != self._expected:
            raise DownloadFailed(f"blob has digest {actual}, expected {self._expected}", untrusted=True)
        try:
            # No flush: a restart re-hashes a complete blob's pieces before any is used.
            await asyncio.to_thread(blob.mark_complete, str(actual), flush=False)
        except StoreError as exc:
            raise DownloadFailed(f"could not record the blob as complete: {exc}", cache_full=True) from None


def _all_signed(keys: TaskKeys, task_id: str, statements: list[PieceStatement]) -> bool:
    try:
        for statement in statements:
            keys.check(task_id, statement)
    except SignatureError:
        return False
    return True


def _cancelling() -> bool:
    """Whether the running task itself is being cancelled (not only something it awaited)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _held_bytes(blob: StoredBlob) -> int:
    geometry = blob.geometry
    return sum(geometry.length(piece) for piece in blob.verified_pieces())


def _text(digest: Digest | None) -> str | None:
    return str(digest) if digest is not None else None
