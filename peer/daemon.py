"""The peer daemon: piece store, piece server, downloads, the control channel, the local
API, and the scrubber that re-verifies what the disk kept across a restart.

Many daemons can live in one process (the load test runs hundreds per event loop): no
globals, one metrics registry per daemon, nothing started by the constructor.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from peer.api import LocalApi
from peer.config import PeerConfig
from peer.control import Control
from peer.download import DownloadContext, DownloadState, TaskDownload
from peer.link import SupernodeLink
from peer.metrics import PeerMetrics
from peer.preheat import Preheater
from peer.reader import read_blob
from peer.rest import SupernodeRest
from peer.scrub import scrub
from peer.slots import DownloadSlots
from peer.torrents import RateCaps, TorrentTransport
from swarmpull.core.blobs import BlobRequest
from swarmpull.core.clock import Clock, SystemClock
from swarmpull.core.events import NO_EVENTS, EventSink, Tagged
from swarmpull.core.protocol import PEER_ID_RE, PeerRegistration
from swarmpull.core.rates import Priority
from swarmpull.edges.daemon import gather_cancel
from swarmpull.edges.http import HostPort, advertised_url, start_site, tls_context
from swarmpull.edges.metrics import metrics_route
from swarmpull.edges.ratelimit import RateLimiter
from swarmpull.edges.store import PieceStore, StoredBlob
from swarmpull.edges.transport import PieceClient, PieceServer

log = logging.getLogger(__name__)


class PeerDaemon:
    """Construct, ``await start()``, ``ensure()`` blobs; ``await stop()`` (safe twice)."""

    def __init__(self, config: PeerConfig, clock: Clock | None = None, events: EventSink = NO_EVENTS) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self._events = events
        self.metrics = PeerMetrics()
        self.peer_id = ""
        self.address: str | None = None  # where other peers fetch our pieces
        self.api_url: str | None = None
        self.store: PieceStore | None = None
        self.control: Control | None = None
        self.piece_server: PieceServer | None = None
        self.torrents: TorrentTransport | None = None
        self._foreground = 0  # downloads a client waits for, under way
        self._session: aiohttp.ClientSession | None = None
        self._client: PieceClient | None = None
        self._context: DownloadContext | None = None
        self._downloads: dict[str, TaskDownload] = {}
        self._runs: set[asyncio.Task[None]] = set()
        self._runners: list[web.AppRunner] = []
        self._background: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        return f"<PeerDaemon {self.peer_id or 'stopped'} {self.address}>"

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        config = self.config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        store = self.store = PieceStore(
            config.data_dir / "blobs", config.cache_size, on_evict=self._evicted, on_corrupt=self._corrupt
        )
        store.load()  # takes the directory's lock first: one daemon per data dir
        store.keep_free(config.min_free)
        self.peer_id = config.peer_id or _load_peer_id(config.data_dir)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=32, ssl=tls_context(config.registry_ca)),
            auto_decompress=False,
        )
        await self._start_servers(store)
        link = None
        if config.supernodes:
            link = SupernodeLink(self._session, config.supernodes, self.peer_id, config.request_timeout)
            registration = PeerRegistration(
                self.peer_id,
                self.address,
                config.upload_slots,
                config.zone,
                config.rack,
                upload_rate=config.upload_limit,
            )
            self.control = Control(link, store, registration, self.clock)
            self._background.append(asyncio.create_task(self.control.run(), name="control"))
            await self._start_torrents(store)
        counters = self.metrics.transfers
        download_limiter = RateLimiter(
            config.download_limit, self.clock, on_wait=counters.limiter_wait.labels("download").inc
        )
        client = self._client = PieceClient(
            self._session,
            self.peer_id,
            config.transport,
            download_limiter,
        )
        self._context = DownloadContext(
            config,
            self.peer_id,
            store,
            self._session,
            client,
            self.control,
            self.metrics,
            self.clock,
            DownloadSlots(config.download_slots),
            asyncio.Semaphore(config.max_direct),
            Tagged(self._events, "peer", self.peer_id),
            self.torrents,
        )
        if config.scrub_rate is not None and any(b.unchecked for b in store.blobs()):
            self._background.append(
                asyncio.create_task(scrub(store, config.scrub_rate, self.metrics), name="scrub")
            )
        log.info("peer %s serving pieces at %s, API at %s", self.peer_id, self.address, self.api_url)

    async def _start_torrents(self, store: PieceStore) -> None:
        """The node's libtorrent session, on the host of its piece server unless told."""
        config = self.config
        if config.torrent is None or not config.supernodes:
            return
        torrent = config.torrent
        if torrent.listen is None:
            host = config.listen.host if config.listen is not None else "127.0.0.1"
            torrent = dataclasses.replace(torrent, listen=HostPort(host, 0))
        assert self._session is not None and self.control is not None
        rest = SupernodeRest(self._session, config.supernodes, self.peer_id, config.request_timeout)
        self.torrents = TorrentTransport(
            torrent,
            store,
            rest,
            config.data_dir / "torrents",
            self.metrics,
            full=RateCaps(config.upload_limit, config.download_limit),
            background=RateCaps(config.preheat_limit, config.preheat_limit),
            control=self.control,
        )
        await self.torrents.start()
        if config.preheat:
            preheater = Preheater(rest, self.torrents, store, self.control, self.clock)
            self._background.append(asyncio.create_task(preheater.run(), name="preheat"))

    async def _start_servers(self, store: PieceStore) -> None:
        config = self.config
        if config.listen is not None:
            app = web.Application()
            counters = self.metrics.transfers
            limiter = RateLimiter(
                config.upload_limit, self.clock, on_wait=counters.limiter_wait.labels("upload").inc
            )
            server = self.piece_server = PieceServer(
                store, counters, limiter, config.upload_slots, config.transport.compression
            )
            store.on_piece = server.notify
            app.add_routes([*server.routes(), metrics_route(self.metrics.registry)])
            # A requester that hangs up frees its slot (and its place in line) at once.
            runner, bound = await start_site(app, config.listen, handler_cancellation=True)
            self._runners.append(runner)
            self.address = advertised_url(bound, config.advertise)
        if config.api_listen is not None:
            runner, bound = await start_site(LocalApi(self).app(), config.api_listen)
            self._runners.append(runner)
            self.api_url = bound.url()

    async def stop(self) -> None:
        await gather_cancel(*self._runs)
        self._runs.clear()
        self._downloads.clear()
        await gather_cancel(*self._background)
        self._background.clear()
        if self.torrents is not None:
            await self.torrents.stop()
            self.torrents = None
        if self.control is not None:
            await self.control.leave()
            self.control = None
        if self.piece_server is not None:
            self.piece_server.close()
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self.store is not None:
            self.store.close()
            self.store = None

    def ensure(self, request: BlobRequest) -> TaskDownload:
        """The download of a blob: a running one is shared, a held blob is ready at once."""
        if self._context is None:
            raise RuntimeError("the peer daemon is not started")
        current = self._downloads.get(request.task_id)
        if current is not None and current.state is not DownloadState.FAILED:
            return current
        download = TaskDownload(self._context, request)
        self._downloads[request.task_id] = download
        run = asyncio.create_task(download.run(), name=f"download-{request.task_id[:20]}")
        self._runs.add(run)
        run.add_done_callback(lambda done: self._ended(download, done))
        if request.priority is Priority.FOREGROUND:
            self._foreground_changed(+1)
        return download

    def _foreground_changed(self, delta: int) -> None:
        """A pull a client waits on started or ended: preheat waits while any runs."""
        self._foreground += delta
        if self.torrents is not None:
            self.torrents.hold_background(self._foreground > 0)

    async def read(
        self, request: BlobRequest, start: int = 0, end: int | None = None
    ) -> AsyncIterator[memoryview]:
        """Bytes ``[start, end)`` of a blob as its verified pieces land (the registry
        proxy's ``BlobSource``); raises DownloadFailed."""
        async for chunk in read_blob(self.ensure(request), start, end):
            yield chunk

    @property
    def registry(self) -> CollectorRegistry:
        """This daemon's metrics."""
        return self.metrics.registry

    def downloads(self) -> list[TaskDownload]:
        return list(self._downloads.values())

    def _ended(self, download: TaskDownload, run: asyncio.Task[None]) -> None:
        self._runs.discard(run)
        if download.request.priority is Priority.FOREGROUND:
            self._foreground_changed(-1)
        if self._downloads.get(download.task_id) is download and download.state is DownloadState.COMPLETE:
            del self._downloads[download.task_id]  # the store answers for it from now on

    def _evicted(self, task_id: str) -> None:
        if self.control is not None:
            self.control.dropped(task_id)
        if self.torrents is not None:
            self.torrents.evicted(task_id)

    def _corrupt(self, blob: StoredBlob, piece: int) -> None:
        self.metrics.blobs.labels("corrupt").inc()


def _load_peer_id(data_dir: Path) -> str:
    """This peer's id, generated once and kept, so a restarted peer is the same peer."""
    path = data_dir / "peer-id"
    if path.exists():
        text = path.read_text().strip()
        if PEER_ID_RE.match(text):
            return text
    peer_id = uuid.uuid4().hex
    path.write_text(peer_id + "\n")
    return peer_id
