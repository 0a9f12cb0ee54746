"""The node's BitTorrent transport: blobs over libtorrent, landing in the piece store.

``fetch(task_id)`` asks the supernode for the blob's torrent (an offer: the torrent, the
announce URL with this node's token, every piece's signed statement) and lets libtorrent
download it, with its own piece picking and choking, straight into the store's data file
for the blob (libtorrent checks every 16 KiB block against the torrent's merkle tree).
Each piece becomes readable once libtorrent passed the torrent pieces over it and its
bytes hash to its signed statement (``swarmpull.edges.torrent.landing``); the blob is
complete once every piece is and the whole file hashes to the digest. A client waiting
on the blob (the registry proxy) reads it as it lands, in order: a fetch someone waits
for asks libtorrent for pieces in order, a background one (preheat) rarest first. A blob
whose whole digest does not match is deleted; nothing unchecked is ever served. After
the download the torrent stays in the session, seeding from the same file while the
store keeps the blob.

Background fetches (preheat) give way to foreground work: while ``hold_background`` is
on (a pull a client waits on is running on this node), their torrents are paused, their
seeding too. The session runs at the node's preheat caps, and at its full limits only
while a torrent some client waited for is in it (it then carries that surge).

A fetch interrupted (the daemon stops or is killed) leaves the store's partial blob,
its checked pieces recorded: the next fetch asks libtorrent only for the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from peer.control import Control
from peer.link import LinkError, SupernodeUnavailable
from peer.metrics import PeerMetrics
from peer.rest import SupernodeRest
from swarmpull.core.blobs import DownloadFailed
from swarmpull.core.digest import Digest
from swarmpull.core.fields import ProtocolError
from swarmpull.core.geometry import PieceGeometry
from swarmpull.core.offers import TorrentOffer, parse_torrent_offer
from swarmpull.core.rates import Priority
from swarmpull.core.signing import PieceStatement
from swarmpull.edges.store import BlobMeta, InOrderDigest, PieceStore, StoredBlob, StoreError
from swarmpull.edges.torrent import (
    Landing,
    Metainfo,
    Torrent,
    TorrentConfig,
    TorrentError,
    TorrentFailed,
    TorrentSession,
    parse_torrent,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RateCaps:
    """Bytes per second each way; None: no limit."""

    upload: int | None
    download: int | None


class TorrentUnavailable(Exception):
    """No torrent for this blob: the seed does not hold it whole, or no supernode answered."""


@dataclass(slots=True)
class _Fetch:
    """One blob's fetch, shared by whoever wants the blob (a pull, a preheat)."""

    task: asyncio.Task[StoredBlob]
    blob: asyncio.Future[StoredBlob | None]
    """The store's blob the bytes land in, once it exists (None: the fetch ended first)."""
    listeners: list[Callable[[], None]] = field(default_factory=list)
    """Called whenever pieces of the blob became readable."""

    def landed(self) -> None:
        for listener in self.listeners:
            listener()


class TorrentTransport:
    """Construct, ``await start()``, ``fetch()`` blobs; ``await stop()`` (safe twice)."""

    def __init__(
        self,
        config: TorrentConfig,
        store: PieceStore,
        rest: SupernodeRest,
        metrics: PeerMetrics,
        full: RateCaps,
        background: RateCaps,
        control: Control,
        pulling: Callable[[str], bool] = lambda _: False,
    ) -> None:
        """``pulling(task_id)``: a pull is writing that blob from the HTTP swarm (a
        torrent then does not write it too: the blob has one writer at a time)."""
        self.config = config
        self._control = control
        self._pulling = pulling
        self._full = full
        self._background_caps = background
        self._store = store
        self._rest = rest
        self._metrics = metrics
        self.session = TorrentSession(config, f"torrents-{rest.peer_id[:12]}")
        self._fetches: dict[str, _Fetch] = {}
        self._active: dict[str, Torrent] = {}  # downloading
        self._seeding: dict[str, Torrent] = {}
        self._background: set[str] = set()  # tasks whose torrents give way to foreground work
        self._held = False

    def __repr__(self) -> str:
        counts = f"active={len(self._active)} seeding={len(self._seeding)}"
        return f"<TorrentTransport {self.session.listen} {counts}>"

    async def start(self) -> None:
        await self.session.start()
        self._apply_caps()

    async def stop(self) -> None:
        fetches = [f.task for f in self._fetches.values()]
        for fetch in fetches:
            fetch.cancel()
        await asyncio.gather(*fetches, return_exceptions=True)
        await self.session.stop()

    # ------------------------------------------------------------------- fetch

    def fetch(self, task_id: str, priority: Priority) -> asyncio.Task[StoredBlob]:
        """The blob, fetched over BitTorrent (one fetch per blob, shared). The task raises
        TorrentUnavailable (no torrent offered: use the HTTP swarm) or DownloadFailed."""
        running = self._fetches.get(task_id)
        if running is None:
            task = asyncio.create_task(self._fetch(task_id), name=f"bt-{task_id[:20]}")
            running = self._fetches[task_id] = _Fetch(task, asyncio.get_running_loop().create_future())
            task.add_done_callback(lambda _: self._ended(task_id, running))
            if priority is Priority.BACKGROUND:
                self._background.add(task_id)
        if priority is Priority.FOREGROUND and task_id in self._background:
            self._background.discard(task_id)  # someone waits for it now: it goes at full speed, in order
            torrent = self._active.get(task_id)
            if torrent is not None:
                torrent.resume()
                torrent.sequential(True)
            self._apply_caps()
        return running.task

    def fetching(self, task_id: str) -> bool:
        """Whether a fetch of the blob is under way (it is the one writer of its pieces)."""
        return task_id in self._fetches

    async def receiving(self, task_id: str, landed: Callable[[], None]) -> StoredBlob | None:
        """The store's blob a running fetch lands in, once it exists; ``landed`` is called
        whenever pieces of it became readable. None: no fetch, or it ended first."""
        running = self._fetches.get(task_id)
        if running is None:
            return None
        running.listeners.append(landed)
        return await asyncio.shield(running.blob)

    def _ended(self, task_id: str, fetch: _Fetch) -> None:
        if self._fetches.get(task_id) is fetch:
            del self._fetches[task_id]
        if not fetch.blob.done():
            fetch.blob.set_result(None)
        fetch.landed()  # the last word: complete, or failed

    def withdraw(self, task_id: str) -> None:
        """Stop a background fetch that nobody waits for any more (its preheat ended)."""
        fetch = self._fetches.get(task_id)
        if fetch is not None and task_id in self._background:
            fetch.task.cancel()

    def progress(self, task_id: str) -> int | None:
        """Bytes of the blob verified by libtorrent (as of its last status update); None
        when not fetching it."""
        torrent = self._active.get(task_id)
        return torrent.verified if torrent is not None else None

    def hold_background(self, hold: bool) -> None:
        """Pause (or resume) background torrents: foreground work goes first."""
        if hold == self._held:
            return
        self._held = hold
        for task_id, torrent in [*self._active.items(), *self._seeding.items()]:
            if task_id in self._background:
                torrent.pause() if hold else torrent.resume()

    def evicted(self, task_id: str) -> None:
        """The blob left the store: stop fetching or seeding it."""
        fetch = self._fetches.get(task_id)
        if fetch is not None:
            fetch.task.cancel()
        torrent = self._seeding.pop(task_id, None)
        self._background.discard(task_id)
        if torrent is not None:
            asyncio.get_running_loop().create_task(self.session.remove(torrent))
        self._apply_caps()

    def _apply_caps(self) -> None:
        """Full limits while a torrent a client waited for is in the session, else the
        preheat caps (background torrents are paused whenever foreground work runs)."""
        foreground = any(t not in self._background for t in [*self._active, *self._seeding])
        caps = self._full if foreground else self._background_caps
        if self.session.listen is not None:
            self.session.set_limits(caps.upload, caps.download)

    async def _fetch(self, task_id: str) -> StoredBlob:
        blob = self._store.get(task_id)
        if blob is not None and blob.complete:
            return blob
        offer = await self._offer(task_id)
        try:
            meta = parse_torrent(offer.torrent, name=offer.name, size=offer.size)
        except TorrentError as exc:
            raise DownloadFailed(f"the supernode offered a bad torrent for {task_id}: {exc}") from None
        if len(offer.statements) != PieceGeometry(offer.size, offer.piece_size).count:
            raise DownloadFailed(f"the offer of {task_id} does not cover every piece")
        if self._pulling(task_id):
            raise TorrentUnavailable(f"a pull is fetching {task_id} over HTTP")
        blob, landing = self._receiver(offer, meta.piece_size)
        with self._store.pinned(blob):
            self._fetches[task_id].blob.set_result(blob)
            statements = {s.piece: s for s in offer.statements}
            lander = _Lander(blob, statements, self._fetches[task_id].landed, lambda: self._flush(task_id))
            try:
                torrent = await self._download(task_id, meta, offer, landing, lander)
            finally:
                await lander.close()
            try:
                await lander.finish(offer.digest)
            except BaseException as exc:
                with contextlib.suppress(TorrentFailed):
                    await self.session.remove(torrent)
                if isinstance(exc, DownloadFailed):
                    self._store.remove(task_id)  # bytes that do not check: none is ever read
                    self._metrics.blobs.labels("corrupt").inc()
                raise
        self._seeding[task_id] = torrent  # from the same file, while the store keeps it
        self._apply_caps()
        return blob

    async def _flush(self, task_id: str) -> None:
        torrent = self._active.get(task_id)
        if torrent is not None:
            await torrent.flush()

    def _receiver(self, offer: TorrentOffer, torrent_piece: int) -> tuple[StoredBlob, Landing]:
        """The store's blob for the offer's bytes and its landing: a partial one resumes,
        unless it holds a piece the offer does not vouch for (another sha256: an earlier
        read's, which a liar fed) or libtorrent would write over pieces it holds (then it
        starts afresh)."""
        meta = BlobMeta(offer.task_id, offer.size, offer.piece_size, str(offer.digest))
        vouched = {s.piece: s.sha_hex for s in offer.statements}
        try:
            blob = self._store.create(meta)
            landing = Landing(blob.geometry, torrent_piece, blob.have)
            stale = any(blob.sha(p) != vouched.get(p) for p in blob.verified_pieces())
            if stale or landing.exposed():
                self._store.remove(offer.task_id)
                blob = self._store.create(meta)
                landing = Landing(blob.geometry, torrent_piece)
        except StoreError as exc:
            raise DownloadFailed(f"no room for {offer.task_id}: {exc}", cache_full=True) from None
        if (blob.meta.size, blob.meta.piece_size) != (offer.size, offer.piece_size):
            raise DownloadFailed(f"{offer.task_id} is held in another geometry than the torrent's")
        if blob.path.name != offer.name:
            raise DownloadFailed(f"the torrent's file is {offer.name!r}, not the store's {blob.path.name!r}")
        return blob, landing

    async def _download(
        self, task_id: str, meta: Metainfo, offer: TorrentOffer, landing: Landing, lander: _Lander
    ) -> Torrent:
        """libtorrent's download into the blob's file, each checked piece to ``lander``;
        the torrent, once every piece is written (removed from the session on failure)."""
        background = task_id in self._background
        try:
            torrent = await self.session.add(
                meta,
                lander.blob.path.parent,
                trackers=[offer.announce],
                paused=background and self._held,
                have=landing.have,
                sequential=not background,
                on_piece=lambda piece: lander.check(landing.passed(piece)),
            )
        except TorrentFailed as exc:
            raise DownloadFailed(f"libtorrent: {exc}") from None
        self._active[task_id] = torrent
        self._apply_caps()
        try:
            await torrent.finished()
            await torrent.flush()
            await self.session.refresh()  # the bytes it took, counted to the end
        except BaseException as exc:
            with contextlib.suppress(TorrentFailed):
                await self.session.remove(torrent)  # the pieces checked so far stay, for a resume
            if isinstance(exc, TorrentFailed):
                raise DownloadFailed(f"libtorrent: {exc}") from None
            raise
        finally:
            torrent.on_piece = None
            del self._active[task_id]
            self._apply_caps()
            self._metrics.download_bytes.labels("bittorrent").inc(torrent.downloaded)
            self._metrics.pieces.labels("corrupt").inc(torrent.hash_failures)
        return torrent

    async def _offer(self, task_id: str) -> TorrentOffer:
        """The supernode's offer (to a registered node: registering first if need be)."""
        answer = None
        for _ in range(2):
            try:
                await self._control.ensure_registered()
                answer = await self._rest.call("torrents", {"task_id": task_id})
                break
            except SupernodeUnavailable as exc:
                raise TorrentUnavailable(str(exc)) from None
            except LinkError as exc:
                if exc.code == "UNKNOWN_PEER":
                    self._control.lost()  # the supernode restarted: register again
                    continue
                if exc.code in ("NOT_SEEDED", "UNKNOWN_TASK", "NOT_OWNER", "PULL_DENIED"):
                    raise TorrentUnavailable(str(exc)) from None
                raise DownloadFailed(f"the supernode refused a torrent for {task_id}: {exc}") from None
        if answer is None:
            raise TorrentUnavailable("the supernode keeps forgetting this node")
        try:
            offer = parse_torrent_offer(answer)
        except ProtocolError as exc:
            raise DownloadFailed(f"the supernode's torrent offer does not parse: {exc}") from None
        if offer.task_id != task_id:
            raise DownloadFailed(f"the supernode offered {offer.task_id}, not {task_id}")
        return offer


class _Lander:
    """Checks the pieces libtorrent passed against their statements, in a thread, one
    batch at a time, and records those that hold (the one writer of the blob's records
    during a fetch); feeds the recorded ones in order to the whole digest as they land
    (``InOrderDigest``, as the HTTP swarm's downloads do), not in a pass at the end."""

    def __init__(
        self,
        blob: StoredBlob,
        statements: dict[int, PieceStatement],
        landed: Callable[[], None],
        flush: Callable[[], Awaitable[None]],
    ) -> None:
        self.blob = blob
        self._flush = flush
        self._statements = statements
        self._landed = landed
        self._whole = InOrderDigest(blob)  # fed by ``_record`` and ``finish``, one at a time
        self._queue: list[int] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task = asyncio.create_task(self._run(), name=f"land-{blob.task_id[:20]}")

    def check(self, pieces: list[int]) -> None:
        self._queue.extend(pieces)
        if pieces:
            self._wake.set()

    async def close(self) -> None:
        """Returns once the pieces queued so far are checked."""
        self._closing = True
        self._wake.set()
        await self._task

    async def finish(self, digest: Digest) -> None:
        """The blob complete: every piece not recorded yet checked now (a resume, or a
        piece whose bytes were not in the file yet when it passed), then the whole digest
        fed to its end and compared. DownloadFailed if any piece or the whole does not hold."""
        blob = self.blob
        await self._record([p for p in range(blob.geometry.count) if not blob.is_verified(p)])
        with contextlib.suppress(StoreError):  # removed meanwhile: said next
            await asyncio.to_thread(self._whole.advance)  # what the last batches left
        # Each failure drops the blob (``untrusted``): nothing of it is kept or served.
        if blob.removed:
            raise DownloadFailed(f"{blob.task_id} left the store during its download", untrusted=True)
        missing = [p for p in range(blob.geometry.count) if not blob.is_verified(p)]
        if missing:
            why = f"piece {missing[0]} libtorrent wrote does not hash to its signed sha256"
            raise DownloadFailed(why, untrusted=True)
        whole = self._whole.hexdigest()
        if whole != digest.hex:
            raise DownloadFailed(f"the blob hashes to sha256:{whole}, not {digest}", untrusted=True)
        try:
            # No flush: a restart re-hashes a complete blob's pieces before any is used.
            await asyncio.to_thread(blob.mark_complete, str(digest), flush=False)
        except StoreError as exc:
            raise DownloadFailed(f"could not record the blob as complete: {exc}", cache_full=True) from None
        self._landed()

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                await self._wake.wait()
                self._wake.clear()
                continue
            pieces, self._queue = self._queue, []
            await self._record(pieces)

    async def _record(self, pieces: list[int]) -> None:
        blob = self.blob
        if blob.removed or not pieces:
            return
        await self._flush()  # libtorrent checks a piece before its bytes reach the file
        try:
            shas = await asyncio.to_thread(lambda: [blob.hash_piece(p) for p in pieces])
        except (OSError, ValueError, StoreError):
            return  # the blob left the store meanwhile (its file closed): ``finish`` says so
        recorded = False
        for piece, sha in zip(pieces, shas, strict=True):
            statement = self._statements[piece]
            # A mismatch is looked at again at the end: the bytes may not be in the file yet.
            if sha == statement.sha_hex and not blob.removed:
                blob.record(piece, sha, statement)
                recorded = True
        if recorded:
            self._landed()
            if self._whole.ready:
                with contextlib.suppress(StoreError):  # removed meanwhile: ``finish`` says so
                    await asyncio.to_thread(self._whole.advance)
