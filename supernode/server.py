"""The supernode daemon: the API, the seed's piece server and the service, on one port."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from prometheus_client import Gauge

from supernode.api import SupernodeApi, errors_as_json
from supernode.capabilities import SeedKeyBook
from supernode.cluster import ClusterState
from supernode.cluster.memory import LocalCluster
from supernode.cluster.redis import RedisCluster
from supernode.config import SupernodeConfig
from supernode.dashboard import PATHS as DASHBOARD_PATHS
from supernode.dashboard import Dashboard, DashboardFeed, Survey, UiAuth
from supernode.metrics import SupernodeMetrics
from supernode.openapi import supernode_openapi
from supernode.origin_limits import OriginLimits
from supernode.preheat.api import PreheatApi
from supernode.preheat.service import Preheats
from supernode.ration import SeedRation
from supernode.registry_books import BooksConfig, RegistryBooks
from supernode.registry_mirror import RegistryMirror
from supernode.scheduler import Scheduler
from supernode.seeding import Seeding
from supernode.service import SupernodeService
from supernode.torrent_api import TorrentApi, peer_caller
from supernode.torrents import SeedTorrents
from supernode.verify import HttpProbe, SourceChecks
from swarmpull.core.clock import Clock, SystemClock
from swarmpull.core.events import NO_EVENTS, EventSink, Tagged
from swarmpull.core.signing import Signer
from swarmpull.core.tasks import redact_url
from swarmpull.core.tracker import ANNOUNCE_PATH, Endpoint, Tracker
from swarmpull.core.upstreams import UpstreamAllow
from swarmpull.edges import listener
from swarmpull.edges.http import (
    MAX_JSON_BODY,
    HostPort,
    advertised_url,
    bind,
    is_loopback,
    start_site,
    tls_context,
)
from swarmpull.edges.metrics import metrics_route, sample
from swarmpull.edges.openapi import openapi_route
from swarmpull.edges.ratelimit import RateLimiter
from swarmpull.edges.registry import RegistryAccess
from swarmpull.edges.store import PieceStore
from swarmpull.edges.tls import CallerGate, identity_middleware
from swarmpull.edges.torrent import TorrentSession
from swarmpull.edges.transport import PieceServer
from swarmpull.edges.transport.gate import PieceGate
from swarmpull.edges.upstream_guard import GuardedConnector

log = logging.getLogger(__name__)

# Reachable without a client certificate under mutual TLS: probes (Kubernetes asks over
# HTTPS with none), the tracker (libtorrent has none; its token authenticates it), the
# dashboard (browsers have none; its token guards it) and the metrics (scrapers).
OPEN_PATHS = ("/healthz", "/readyz", "/metrics", ANNOUNCE_PATH, *DASHBOARD_PATHS)


class Supernode:
    """Construct, ``await start()``, use ``url``; ``await stop()`` (safe twice)."""

    def __init__(
        self, config: SupernodeConfig, clock: Clock | None = None, events: EventSink = NO_EVENTS
    ) -> None:
        self.config = config
        self._clock = clock or SystemClock()
        self._events = events
        self.metrics = SupernodeMetrics()
        self.url = ""
        self.service: SupernodeService | None = None
        self.store: PieceStore | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._peer_session: aiohttp.ClientSession | None = None
        self._temp_dir: Path | None = None
        self._cluster: ClusterState | None = None
        self._pieces: PieceServer | None = None
        self._mirror: RegistryMirror | None = None
        self._feed: DashboardFeed | None = None
        self.torrents: TorrentSession | None = None
        self.preheats: Preheats | None = None

    def __repr__(self) -> str:
        return f"<Supernode {self.url or 'stopped'}>"

    @property
    def app(self) -> web.Application | None:
        """The application served, while started (its routes are checked against the
        OpenAPI document)."""
        return self._runner.app if self._runner is not None else None

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        config = self.config
        data_dir = config.data_dir
        if data_dir is None:
            data_dir = self._temp_dir = Path(tempfile.mkdtemp(prefix="swarmpull-supernode-"))
        data_dir.mkdir(parents=True, exist_ok=True)
        store = self.store = PieceStore(data_dir / "seed", config.cache_size)
        store.load()  # takes the directory's lock first: one supernode per data dir
        store.keep_free(config.min_free)
        signer = _signing_key(data_dir / "signing-key.pem")
        self._session = aiohttp.ClientSession(  # every upstream read: only allowed addresses
            connector=GuardedConnector(
                UpstreamAllow(config.upstream_allow), limit=256, ssl=tls_context(config.registry.ca)
            ),
            auto_decompress=False,
        )
        limiter = RateLimiter(
            config.seed_upload_limit,
            self._clock,
            on_wait=self.metrics.transfers.limiter_wait.labels("upload").inc,
        )
        scheduler = Scheduler(config.scheduler)
        scheduler.add_seed(config.seed_id, config.seed_upload_limit)
        ration = SeedRation(config.seed_copies, scheduler.holders, self._clock.monotonic, config.report_min)
        # Every /pieces request carries a capability for its task, checked with the task's keys.
        gate = PieceGate(SeedKeyBook(self._task_keys), mutual=config.tls is not None)
        pieces = self._pieces = PieceServer(
            store, self.metrics.transfers, limiter, config.seed_upload_slots, ration=ration, gate=gate
        )
        store.on_piece = pieces.notify
        sock, bound = bind(config.listen)
        self.url = advertised_url(bound, config.advertise, "https" if config.tls is not None else "http")
        cluster = self._cluster = self._connect_cluster()
        events = Tagged(self._events, "supernode", self.url)
        seeding = Seeding(
            config, store, self._session, self._clock, scheduler, signer, cluster, self.metrics, events
        )
        access = RegistryAccess(self._session, config.registry, self._clock)
        seeding.authorize = access.anonymous_authorization
        books = RegistryBooks(
            BooksConfig(config.tag_ttl, config.tag_stale, config.auth_cache_ttl, config.manifest_cache)
        )
        mirror = self._mirror = RegistryMirror(access, books, self._clock)
        service = self.service = SupernodeService(
            config, seeding, scheduler, cluster, self._clock, self.url, self.metrics, events
        )
        # Its own checks reach peers where they listen (loopback, private): not guarded.
        self._peer_session = aiohttp.ClientSession(auto_decompress=False)
        service.membership.checks = SourceChecks(
            HttpProbe(self._peer_session, config.seed_id, config.tls, service.capabilities.own),
            scheduler,
            service.tasks.get,
            service.presence.address,
            self._clock.monotonic,
            service.presence.log_events,
            on_verdict=lambda verdict: self.metrics.checks.labels(verdict.value).inc(),
        )
        auth = UiAuth(config.ui_token) if config.ui_token is not None else None
        if auth is not None:
            upstream = self.metrics.registry
            survey = Survey(
                self.url,
                scheduler,
                lambda: service.tasks,
                service.reports.traffic,
                lambda: sample(upstream, "swarmpull_supernode_upstream_bytes_total"),
                service.presence.has_channel,
            )
            self._feed = DashboardFeed(survey, cluster, self._clock, config.ui_interval)
        seed_torrents = await self._start_torrents(store)

        def evicted(task_id: str) -> None:  # the seed no longer holds the blob
            ration.forget(task_id)
            seed_torrents.evicted(task_id)

        store.on_evict = evicted
        gate = CallerGate(mutual=config.tls is not None)
        torrent_api = TorrentApi(
            seed_torrents,
            seed_torrents.tracker,
            scheduler.knows_peer,
            self._clock,
            peer_caller(gate),
            may_have=lambda task_id, node: (
                service.capabilities.lets_in(task_id, node) or self._preheated(task_id, node)
            ),
        )
        preheats = self.preheats = Preheats(service, access, seed_torrents, self._clock, config.tick_interval)
        middlewares = [errors_as_json]
        if config.tls is not None:  # any cluster certificate, on every path but the open ones
            middlewares.append(identity_middleware(open_paths=OPEN_PATHS))
        app = web.Application(middlewares=middlewares, client_max_size=MAX_JSON_BODY)
        app.add_routes(
            SupernodeApi(service, mirror, gate).routes()
            + pieces.routes()
            + torrent_api.routes()
            + PreheatApi(preheats, config.registry.default_registry, peer_caller(gate), gate).routes()
            + [metrics_route(self.metrics.registry)]
            + Dashboard(self._feed, auth).routes()
            + [openapi_route(supernode_openapi)]
        )
        server_tls = config.tls.server if config.tls is not None else None
        self._runner, _ = await start_site(
            app, sock, server_tls, send_stall=listener.SEND_STALL, handler_cancellation=True
        )
        if cluster.shared and not await cluster.ping():
            log.warning(
                "redis at %s does not answer yet; retrying in the background",
                redact_url(config.redis_url or ""),
            )
        await service.start()
        await preheats.start()
        if self._feed is not None:
            await self._feed.start()
        log.info("supernode listening on %s (seed cache %s)", self.url, data_dir)

    def _preheated(self, task_id: str, node: str) -> bool:
        """A preheat job (an operator's act) gave ``node`` the blob to hold."""
        return self.preheats is not None and self.preheats.assigned(task_id, node)

    def _task_keys(self, task_id: str) -> list[str] | None:
        """The keys a task's capabilities are checked with at the seed: the task's own."""
        service = self.service
        task = service.tasks.get(task_id) if service is not None else None
        return service.seeding.keys(task) if task is not None else None

    async def _start_torrents(self, store: PieceStore) -> SeedTorrents:
        """The seed's libtorrent session, on the API's host unless told otherwise."""
        config = self.config.torrent
        if config.listen is None:
            config = dataclasses.replace(config, listen=HostPort(self.config.listen.host, 0))
        if config.upload_limit is None:  # the seed's cap holds for both of its transports
            config = dataclasses.replace(config, upload_limit=self.config.seed_upload_limit)
        session = self.torrents = TorrentSession(config, "seed-torrents")
        await session.start()
        assert session.listen is not None
        seed = Endpoint(
            await _address_of(urlsplit(self.url).hostname or session.listen.host), session.listen.port
        )
        tracker = Tracker(os.urandom(32), loopback=is_loopback(config.listen.host))  # a cluster on one host
        torrents = SeedTorrents(store, session, tracker, seed, self.url)
        Gauge(
            "swarmpull_supernode_torrent_upload_bytes",
            "Payload bytes the seed sent over BitTorrent since its torrents were added",
            registry=self.metrics.registry,
        ).set_function(torrents.uploaded)
        return torrents

    def _connect_cluster(self) -> ClusterState:
        config = self.config
        if config.redis_url is None:
            return LocalCluster(self.url, OriginLimits(list(config.origin_limits), self._clock))
        client = RedisCluster.client(config.redis_url, config.redis_password)
        origins = OriginLimits(list(config.origin_limits), self._clock, client, self.url)
        return RedisCluster(client, self.url, config.lease_ttl, self._clock.monotonic, origins)

    async def stop(self) -> None:
        if self._feed is not None:  # open pages end their streams first
            await self._feed.stop()
            self._feed = None
        if self._mirror is not None:
            await self._mirror.stop()
            self._mirror = None
        if self.preheats is not None:
            await self.preheats.stop()
            self.preheats = None
        if self.service is not None:
            await self.service.stop()
            self.service = None
        if self._pieces is not None:
            self._pieces.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.torrents is not None:
            await self.torrents.stop()
            self.torrents = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._peer_session is not None:
            await self._peer_session.close()
            self._peer_session = None
        if self._cluster is not None:
            await self._cluster.close()
            self._cluster = None
        if self.store is not None:
            self.store.close()
            self.store = None
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None


async def _address_of(host: str) -> str:
    """The IP address of ``host`` (a tracker hands out addresses, not names)."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
        return str(infos[0][4][0])


def _signing_key(path: Path) -> Signer:
    """This supernode's signing key, made once and kept beside its seed cache, so that
    what it signed before a restart still checks after it."""
    if path.exists():
        return Signer.from_pem(path.read_bytes())
    signer = Signer.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(signer.to_pem())
    return signer
