"""The peer daemon: piece store, piece server, downloads, the control channel, the local
API, and the scrubber that re-verifies what the disk kept across a restart.

Many daemons can live in one process (the load test runs hundreds per event loop): no
globals, one metrics registry per daemon, nothing started by the constructor.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from peer.api import LocalApi
from peer.capabilities import CapabilityBook
from peer.config import PeerConfig
from peer.control import Control
from peer.download import DAEMON_STOPPING, DownloadContext, DownloadState, TaskDownload
from peer.link import SupernodeLink
from peer.metrics import PeerMetrics
from peer.preheat import Preheater, RegistryLogin
from peer.reader import read_blob
from peer.registry import RegistryQuestions
from peer.rest import SupernodeRest
from peer.rights import LocalRights
from peer.scrub import scrub
from peer.slots import DownloadSlots
from peer.torrents import RateCaps, TorrentTransport
from swarmpull.core.blobs import BlobRequest, DownloadFailed
from swarmpull.core.clock import Clock, SystemClock
from swarmpull.core.events import NO_EVENTS, EventSink, Tagged
from swarmpull.core.fields import PEER_ID_RE
from swarmpull.core.oci import Descriptor
from swarmpull.core.protocol import PeerRegistration
from swarmpull.core.rates import Priority
from swarmpull.core.registry_questions import BlobQuestion, ManifestAnswer, ManifestQuestion
from swarmpull.edges import listener
from swarmpull.edges.daemon import gather_cancel
from swarmpull.edges.http import HostPort, advertised_url, start_site, tls_context
from swarmpull.edges.metrics import metrics_route
from swarmpull.edges.ratelimit import RateLimiter
from swarmpull.edges.store import PieceStore, StoredBlob
from swarmpull.edges.tls import identity_middleware
from swarmpull.edges.transport import PieceClient, PieceServer
from swarmpull.edges.transport.gate import PieceGate

log = logging.getLogger(__name__)

RECENT_SUMMARIES = 256  # ended downloads whose summary the local API still answers


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
        self.capabilities = CapabilityBook()  # ours for each task, and the keys to check others'
        self._rights: LocalRights | None = None
        self.piece_server: PieceServer | None = None
        self.torrents: TorrentTransport | None = None
        # This node's own registry login (the registry proxy's), for private preheats.
        self.registry_login: RegistryLogin | None = None
        self._foreground = 0  # downloads a client waits for, under way
        self._session: aiohttp.ClientSession | None = None  # upstreams: the system's CAs
        self._cluster: aiohttp.ClientSession | None = None  # supernodes and peers
        self._client: PieceClient | None = None
        self._context: DownloadContext | None = None
        self._downloads: dict[str, TaskDownload] = {}
        self._runs: dict[TaskDownload, asyncio.Task[None]] = {}
        self._stopping = False  # from the first step of ``stop``: no download starts
        self._ended_summaries: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._runners: list[web.AppRunner] = []
        self._background: list[asyncio.Task[None]] = []
        self._questions = RegistryQuestions(None, config.open_timeout)

    def __repr__(self) -> str:
        return f"<PeerDaemon {self.peer_id or 'stopped'} {self.address}>"

    @property
    def apps(self) -> list[web.Application]:
        """The applications served (piece server, local API), while started."""
        return [runner.app for runner in self._runners]

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        self._stopping = False
        config = self.config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        store = self.store = PieceStore(
            config.data_dir / "blobs", config.cache_size, on_evict=self._evicted, on_corrupt=self._corrupt
        )
        store.load()  # takes the directory's lock first: one daemon per data dir
        store.keep_free(config.min_free)
        self.peer_id = config.node_id or _load_peer_id(config.data_dir)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=32, ssl=tls_context(config.registry_ca)),
            auto_decompress=False,
        )
        # The cluster's own session: with mutual TLS each request names the certificate it
        # expects (the cluster CA only, never the system's; ``ClusterTls.to_node``).
        self._cluster = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=32), auto_decompress=False
        )
        await self._start_servers(store)
        link = None
        if config.supernodes:
            link = SupernodeLink(
                self._cluster, config.supernodes, self.peer_id, config.request_timeout, self._supernode_tls()
            )
            registration = PeerRegistration(
                self.peer_id,
                self.address,
                config.upload_slots,
                config.zone,
                config.rack,
                upload_rate=config.upload_limit,
            )
            self.control = Control(link, store, registration, self.clock, self.capabilities)
            self._rights = LocalRights(
                self.control, store, self.peer_id, self.clock, self._running, config.open_timeout
            )
            self._questions = RegistryQuestions(link, config.open_timeout)
            self._background.append(asyncio.create_task(self.control.run(), name="control"))
            await self._start_torrents(store)
        counters = self.metrics.transfers
        download_limiter = RateLimiter(
            config.download_limit, self.clock, on_wait=counters.limiter_wait.labels("download").inc
        )
        client = self._client = PieceClient(
            self._cluster,
            self.peer_id,
            config.transport,
            download_limiter,
            tls=config.tls,
            capability=self.capabilities.capability,
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
        # Debug only: the command that runs the daemon says "serving" once all of it runs.
        log.debug("peer %s serving pieces at %s, API at %s", self.peer_id, self.address, self.api_url)

    def _supernode_tls(self) -> dict[str, Any] | None:
        """What a request to a supernode passes: with mutual TLS, any supernode's name."""
        return self.config.tls.to_supernode() if self.config.tls is not None else None

    def _pulling_over_http(self, task_id: str) -> bool:
        """Whether a pull is writing the blob's pieces from the HTTP swarm right now."""
        return self._running(task_id) and self._downloads[task_id].over_http

    async def _start_torrents(self, store: PieceStore) -> None:
        """The node's libtorrent session, on the host of its piece server unless told."""
        config = self.config
        if config.torrent is None or not config.supernodes:
            return
        torrent = config.torrent
        if torrent.listen is None:
            host = config.listen.host if config.listen is not None else "127.0.0.1"
            torrent = dataclasses.replace(torrent, listen=HostPort(host, 0))
        if config.tls is not None:  # the tracker is the supernode's https API: see verify_tracker
            torrent = dataclasses.replace(torrent, verify_tracker=False)
        assert self._cluster is not None and self.control is not None
        rest = SupernodeRest(
            self._cluster, config.supernodes, self.peer_id, config.request_timeout, self._supernode_tls()
        )
        self.torrents = TorrentTransport(
            torrent,
            store,
            rest,
            self.metrics,
            full=RateCaps(config.upload_limit, config.download_limit),
            background=RateCaps(config.preheat_limit, config.preheat_limit),
            control=self.control,
            pulling=self._pulling_over_http,
        )
        await self.torrents.start()
        if config.preheat:
            preheater = Preheater(
                rest,
                self.torrents,
                store,
                self.control,
                self.clock,
                self.registry_login,
                config.request_timeout,
            )
            self._background.append(asyncio.create_task(preheater.run(), name="preheat"))

    async def _start_servers(self, store: PieceStore) -> None:
        config = self.config
        if config.listen is not None:
            tls = config.tls
            # With mutual TLS only a cluster certificate gets pieces; metrics stay open.
            app = web.Application(
                middlewares=[identity_middleware(open_paths=("/metrics",))] if tls is not None else []
            )
            counters = self.metrics.transfers
            limiter = RateLimiter(
                config.upload_limit, self.clock, on_wait=counters.limiter_wait.labels("upload").inc
            )
            # A requester needs a capability for the task (none to check without a supernode).
            gate = PieceGate(self.capabilities, mutual=tls is not None) if config.supernodes else None
            server = self.piece_server = PieceServer(
                store, counters, limiter, config.upload_slots, config.transport.compression, gate=gate
            )
            store.on_piece = server.notify
            app.add_routes([*server.routes(), metrics_route(self.metrics.registry)])
            # A requester that hangs up frees its slot (and its place in line) at once.
            runner, bound = await start_site(
                app,
                config.listen,
                tls.server if tls is not None else None,
                send_stall=listener.SEND_STALL,
                handler_cancellation=True,
            )
            self._runners.append(runner)
            self.address = advertised_url(bound, config.advertise, "https" if tls is not None else "http")
        if config.api_listen is not None:
            # A client that hangs up is gone at once: its download may be abandoned.
            runner, bound = await start_site(
                LocalApi(self).app(), config.api_listen, handler_cancellation=True
            )
            self._runners.append(runner)
            self.api_url = bound.url()

    async def stop(self) -> None:
        self._stopping = True  # a request that comes while the listeners still run fails
        await gather_cancel(*self._runs.values())
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
        for session in (self._session, self._cluster):
            if session is not None:
                await session.close()
        self._session = self._cluster = None
        if self.store is not None:
            self.store.close()
            self.store = None

    def ensure(self, request: BlobRequest) -> TaskDownload:
        """The download of a blob, run to its end whoever comes and goes: a running one is
        shared, a held blob is ready at once."""
        download = self._download(request)
        download.kept = True
        return download

    async def authorize(self, request: BlobRequest) -> None:
        """DownloadFailed (``denied``) unless the request's own credentials may have the
        blob, for a request that would not open the task itself (``peer.rights``)."""
        if self._rights is not None:
            await self._rights.check(request)

    def _running(self, task_id: str) -> bool:
        current = self._downloads.get(task_id)
        return current is not None and current.state not in (DownloadState.COMPLETE, DownloadState.FAILED)

    @contextlib.contextmanager
    def requested(self, request: BlobRequest) -> Iterator[TaskDownload]:
        """The download of a blob for a client that may leave before it ends (``swarmpull
        get`` over the local API, containerd through the proxy). When the last such client
        has left and nobody ``ensure``d it, the download is cancelled; the pieces verified
        so far stay in the store for the next request."""
        download = self._download(request)
        download.requesters += 1
        try:
            yield download
        finally:
            download.requesters -= 1
            run = self._runs.get(download)
            unfinished = download.state not in (DownloadState.COMPLETE, DownloadState.FAILED)
            if download.requesters == 0 and not download.kept and run is not None and unfinished:
                download.stopping_because = "every client that asked for it has left"
                run.cancel()

    def _download(self, request: BlobRequest) -> TaskDownload:
        if self._context is None:
            raise RuntimeError("the peer daemon is not started")
        current = self._downloads.get(request.task_id)
        if current is not None and current.state is not DownloadState.FAILED:
            return current
        download = TaskDownload(self._context, request)
        self._downloads[request.task_id] = download
        if self._stopping:  # its sessions are closing: it could only fail later, half-way
            download.refuse(DownloadFailed(DAEMON_STOPPING, stopping=True))
            return download
        run = asyncio.create_task(download.run(), name=f"download-{request.task_id[:20]}")
        self._runs[download] = run
        run.add_done_callback(lambda done: self._ended(download))
        if request.priority is Priority.FOREGROUND:
            self._foreground_changed(+1)
        return download

    def _foreground_changed(self, delta: int) -> None:
        """A pull a client waits on started or ended: preheat waits while any runs."""
        self._foreground += delta
        if self.torrents is not None:
            self.torrents.hold_background(self._foreground > 0)

    async def read(
        self, request: BlobRequest, start: int = 0, end: int | None = None, told: int | None = None
    ) -> AsyncIterator[memoryview]:
        """Bytes ``[start, end)`` of a blob as its verified pieces land (the registry
        proxy's ``BlobSource``; ``told``: the size it was told); raises DownloadFailed."""
        with self.requested(request) as download:
            async for chunk in read_blob(download, start, end, told):
                yield chunk

    def summary(self, task_id: str) -> dict[str, Any] | None:
        """The latest download of a task, under way or recently ended: what it fetched from
        where, or why it failed."""
        current = self._downloads.get(task_id)
        if current is not None:
            return current.summary()
        return self._ended_summaries.get(task_id)

    @property
    def ready(self) -> bool:
        """Able to serve: registered with a supernode (or configured without one)."""
        return self._context is not None and (self.control is None or self.control.registered)

    async def manifest(self, question: ManifestQuestion) -> ManifestAnswer:
        """A manifest from what the cluster holds (the registry proxy's ``ClusterRegistry``);
        raises RegistryRefused or NotAnswered."""
        return await self._questions.manifest(question)

    async def blob_descriptor(self, question: BlobQuestion) -> Descriptor:
        """A blob's size and media type from what the cluster knows; likewise."""
        return await self._questions.blob_descriptor(question)

    @property
    def registry(self) -> CollectorRegistry:
        """This daemon's metrics."""
        return self.metrics.registry

    def downloads(self) -> list[TaskDownload]:
        return list(self._downloads.values())

    def _ended(self, download: TaskDownload) -> None:
        self._runs.pop(download, None)
        if download.request.priority is Priority.FOREGROUND:
            self._foreground_changed(-1)
        self._ended_summaries[download.task_id] = download.summary()
        self._ended_summaries.move_to_end(download.task_id)
        while len(self._ended_summaries) > RECENT_SUMMARIES:
            self._ended_summaries.popitem(last=False)
        if self._downloads.get(download.task_id) is download and download.state is DownloadState.COMPLETE:
            del self._downloads[download.task_id]  # the store answers for it from now on
        elif download.state is DownloadState.FAILED:  # listed while recent, not for ever
            failed = [t for t, d in self._downloads.items() if d.state is DownloadState.FAILED]
            for task_id in failed[: max(0, len(failed) - RECENT_SUMMARIES)]:
                del self._downloads[task_id]

    def _evicted(self, task_id: str) -> None:
        self.capabilities.forget(task_id)
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
        if PEER_ID_RE.fullmatch(text):
            return text
    peer_id = uuid.uuid4().hex
    path.write_text(peer_id + "\n")
    return peer_id
