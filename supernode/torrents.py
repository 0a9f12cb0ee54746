"""The seed over BitTorrent: a v2 torrent for each blob the supernode holds completely,
seeded from its store by the supernode's libtorrent session and tracked by its tracker.

A torrent is made the first time a node asks for it (reading the blob once, in a
thread), kept in memory while the blob stays in the seed cache, and dropped with it.
Handing a torrent to a node makes the node a member of its swarm (``Tracker.admit``):
the offer carries the node's announce URL with its token, and every piece's signed
statement, so the node can check the whole blob before its store takes it in.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import quote

from swarmpull.core.digest import Digest
from swarmpull.core.offers import TorrentOffer
from swarmpull.core.tracker import ANNOUNCE_PATH, Endpoint, Tracker
from swarmpull.edges.store import PieceStore, StoredBlob
from swarmpull.edges.torrent import Metainfo, Torrent, TorrentSession, make_torrent

log = logging.getLogger(__name__)


class NotSeeded(Exception):
    """The seed does not hold this blob completely: no torrent for it (yet)."""


class SeedTorrents:
    """The one writer of the supernode's torrents (on its event loop)."""

    def __init__(
        self, store: PieceStore, session: TorrentSession, tracker: Tracker, seed: Endpoint, base_url: str
    ) -> None:
        self._store = store
        self._session = session
        self.tracker = tracker
        self._seed = seed
        self._announce = base_url.rstrip("/") + ANNOUNCE_PATH
        self._made: dict[str, tuple[Metainfo, Torrent]] = {}
        self._making: dict[str, asyncio.Task[Metainfo]] = {}

    def __repr__(self) -> str:
        return f"<SeedTorrents {len(self._made)} seeded>"

    async def offer(self, task_id: str, node: str) -> TorrentOffer:
        """The torrent of a blob for ``node``, which becomes a member of its swarm."""
        blob = self._store.get(task_id)
        if blob is None or not blob.complete or not blob.meta.digest or not task_id.startswith("sha256-"):
            raise NotSeeded(f"the seed does not hold {task_id} completely")
        meta = await self.torrent(blob)
        token = self.tracker.admit(meta.announce_hash, node)
        return TorrentOffer(
            task_id,
            blob.meta.size,
            blob.meta.piece_size,
            Digest.parse(blob.meta.digest),
            meta.data,
            f"{self._announce}?node={quote(node)}&token={token}",
            [blob.statements[p] for p in range(blob.geometry.count)],
        )

    async def torrent(self, blob: StoredBlob) -> Metainfo:
        """The blob's torrent, made and seeded on first use (concurrent askers share it)."""
        made = self._made.get(blob.task_id)
        if made is not None:
            return made[0]
        making = self._making.get(blob.task_id)
        if making is None:
            making = self._making[blob.task_id] = asyncio.create_task(self._make(blob))
            making.add_done_callback(lambda _: self._making.pop(blob.task_id, None))
        return await asyncio.shield(making)

    def uploaded(self) -> int:
        """Payload bytes sent over BitTorrent by the torrents seeded now (as of libtorrent's
        last status update)."""
        return sum(torrent.uploaded for _, torrent in self._made.values())

    def evicted(self, task_id: str) -> None:
        """The blob left the seed cache: stop seeding and tracking it."""
        made = self._made.pop(task_id, None)
        if made is not None:
            meta, torrent = made
            self.tracker.close(meta.announce_hash)
            asyncio.get_running_loop().create_task(self._session.remove(torrent))

    async def _make(self, blob: StoredBlob) -> Metainfo:
        with self._store.pinned(blob):  # not evicted while it is read
            meta = await asyncio.to_thread(make_torrent, blob.path, blob.meta.piece_size)
            if blob.removed:
                raise NotSeeded(f"{blob.task_id} left the seed cache")
            torrent = await self._session.add(meta, blob.path.parent, seed=True)
        self.tracker.open(meta.announce_hash, self._seed)
        self._made[blob.task_id] = (meta, torrent)
        # Not the info-hash: libtorrent's peers do not authenticate each other, so whoever
        # reads it in a log could ask a seeding node for a private blob.
        log.info("seeding %s over BitTorrent (%d bytes)", blob.task_id, meta.size)
        return meta
