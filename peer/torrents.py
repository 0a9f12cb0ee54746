"""The node's BitTorrent transport: whole blobs over libtorrent, adopted into the store.

``fetch(task_id)`` asks the supernode for the blob's torrent (an offer: the torrent, the
announce URL with this node's token, every piece's signed statement), lets libtorrent
download it into a staging directory with its own piece picking and choking (it checks
every 16 KiB block against the torrent's merkle tree), then checks the whole file
against the blob's digest and each piece against its statement, and only then hands
it to the piece store, where the HTTP piece server and the registry proxy serve it as
any other blob. A file that fails the check is deleted; nothing of it is ever served.
After adoption the torrent keeps seeding from the store's file until the blob leaves.

Background fetches (preheat) give way to foreground work: while ``hold_background`` is
on (a pull a client waits on is running on this node), their torrents are paused, their
seeding too. The session runs at the node's preheat caps, and at its full limits only
while a torrent some client waited for is in it (it then carries that surge).

A fetch interrupted (the daemon stops or is killed) leaves its partial file: libtorrent
checks it and resumes when the blob is asked for again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from peer.control import Control
from peer.link import LinkError, SupernodeUnavailable
from peer.metrics import PeerMetrics
from peer.rest import SupernodeRest
from swarmpull.core.blobs import DownloadFailed
from swarmpull.core.fields import ProtocolError
from swarmpull.core.geometry import PieceGeometry
from swarmpull.core.offers import TorrentOffer, parse_torrent_offer
from swarmpull.core.rates import Priority
from swarmpull.edges.store import BlobMeta, PieceCorrupt, PieceStore, StoredBlob, StoreError
from swarmpull.edges.torrent import (
    Torrent,
    TorrentConfig,
    TorrentError,
    TorrentFailed,
    TorrentSession,
    parse_torrent,
    verify_file,
)

log = logging.getLogger(__name__)

STALE_STAGING = 24 * 3600.0  # seconds a partial download is kept for a resume


@dataclass(frozen=True, slots=True)
class RateCaps:
    """Bytes per second each way; None: no limit."""

    upload: int | None
    download: int | None


class TorrentUnavailable(Exception):
    """No torrent for this blob: the seed does not hold it whole, or no supernode answered."""


class TorrentTransport:
    """Construct, ``await start()``, ``fetch()`` blobs; ``await stop()`` (safe twice)."""

    def __init__(
        self,
        config: TorrentConfig,
        store: PieceStore,
        rest: SupernodeRest,
        staging: Path,
        metrics: PeerMetrics,
        full: RateCaps,
        background: RateCaps,
        control: Control,
    ) -> None:
        self.config = config
        self._control = control
        self._full = full
        self._background_caps = background
        self._store = store
        self._rest = rest
        self._staging = staging
        self._metrics = metrics
        self.session = TorrentSession(config, f"torrents-{rest.peer_id[:12]}")
        self._fetches: dict[str, asyncio.Task[StoredBlob]] = {}
        self._active: dict[str, Torrent] = {}  # downloading
        self._seeding: dict[str, Torrent] = {}
        self._background: set[str] = set()  # tasks whose torrents give way to foreground work
        self._held = False

    def __repr__(self) -> str:
        counts = f"active={len(self._active)} seeding={len(self._seeding)}"
        return f"<TorrentTransport {self.session.listen} {counts}>"

    async def start(self) -> None:
        self._staging.mkdir(parents=True, exist_ok=True)
        cutoff = time.time() - STALE_STAGING
        for path in self._staging.iterdir():
            done = (b := self._store.get(path.name.split(".")[0])) is not None and b.complete
            if path.is_file() and (done or path.stat().st_mtime < cutoff):
                path.unlink(missing_ok=True)
        await self.session.start()
        self._apply_caps()

    async def stop(self) -> None:
        fetches = list(self._fetches.values())
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
            running = self._fetches[task_id] = asyncio.create_task(
                self._fetch(task_id), name=f"bt-{task_id[:20]}"
            )
            running.add_done_callback(lambda _: self._fetches.pop(task_id, None))
            if priority is Priority.BACKGROUND:
                self._background.add(task_id)
        if priority is Priority.FOREGROUND and task_id in self._background:
            self._background.discard(task_id)  # someone waits for it now: it goes at full speed
            torrent = self._active.get(task_id)
            if torrent is not None:
                torrent.resume()
            self._apply_caps()
        return running

    def withdraw(self, task_id: str) -> None:
        """Stop a background fetch that nobody waits for any more (its preheat ended)."""
        fetch = self._fetches.get(task_id)
        if fetch is not None and task_id in self._background:
            fetch.cancel()

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
        """The blob left the store: stop seeding it."""
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
        geometry = PieceGeometry(offer.size, offer.piece_size)
        if len(offer.statements) != geometry.count:
            raise DownloadFailed(f"the offer of {task_id} does not cover every piece")
        background = task_id in self._background
        try:
            torrent = await self.session.add(
                meta, self._staging, trackers=[offer.announce], paused=background and self._held
            )
        except TorrentFailed as exc:
            raise DownloadFailed(f"libtorrent: {exc}") from None
        self._active[task_id] = torrent
        self._apply_caps()
        try:
            await torrent.finished()
            await torrent.flush()
            await self.session.refresh()  # the bytes it took, counted to the end
        except TorrentFailed as exc:
            raise DownloadFailed(f"libtorrent: {exc}") from None
        finally:
            del self._active[task_id]
            self._apply_caps()
            self._metrics.download_bytes.labels("bittorrent").inc(torrent.downloaded)
            self._metrics.pieces.labels("corrupt").inc(torrent.hash_failures)
            with contextlib.suppress(TorrentFailed):
                await self.session.remove(torrent)  # the partial file stays, for a resume
        blob = await self._adopt(offer, torrent.path)
        await self._seed(task_id, blob, offer, meta)
        return blob

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

    async def _adopt(self, offer: TorrentOffer, path: Path) -> StoredBlob:
        """The downloaded file into the store, once it checked whole and piece by piece."""
        geometry = PieceGeometry(offer.size, offer.piece_size)
        try:
            await asyncio.to_thread(verify_file, path, geometry, offer.digest, offer.statements)
        except (PieceCorrupt, OSError) as exc:
            path.unlink(missing_ok=True)
            self._metrics.blobs.labels("corrupt").inc()
            raise DownloadFailed(f"the blob libtorrent wrote fails its check, deleted: {exc}") from None
        meta = BlobMeta(offer.task_id, offer.size, offer.piece_size, str(offer.digest))
        try:
            return self._store.adopt(meta, path, offer.statements)
        except StoreError as exc:
            path.unlink(missing_ok=True)
            raise DownloadFailed(f"the store did not take {offer.task_id}: {exc}", cache_full=True) from None

    async def _seed(self, task_id: str, blob: StoredBlob, offer: TorrentOffer, meta) -> None:  # type: ignore[no-untyped-def]
        """Keep the blob in the swarm, from the store's file, while the store keeps it."""
        if task_id in self._seeding or blob.removed:
            return
        try:
            held = self._held and task_id in self._background
            torrent = await self.session.add(
                meta, blob.path.parent, seed=True, trackers=[offer.announce], paused=held
            )
        except TorrentFailed as exc:
            log.warning("cannot seed %s over BitTorrent: %s", task_id, exc)
            return
        if blob.removed:  # evicted meanwhile
            await self.session.remove(torrent)
            return
        self._seeding[task_id] = torrent
        self._apply_caps()
