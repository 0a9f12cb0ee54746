"""The supernode daemon: the API, the seed's piece server and the service, on one port."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import aiohttp
from aiohttp import web

from supernode.api import SupernodeApi, errors_as_json
from supernode.cluster import ClusterState
from supernode.cluster.memory import LocalCluster
from supernode.cluster.redis import RedisCluster
from supernode.config import SupernodeConfig
from supernode.metrics import SupernodeMetrics
from supernode.openapi import supernode_openapi
from supernode.origin_limits import OriginLimits
from supernode.scheduler import Scheduler
from supernode.seeding import Seeding
from supernode.service import SupernodeService
from swarmpull.core.clock import Clock, SystemClock
from swarmpull.core.signing import Signer
from swarmpull.core.tasks import redact_url
from swarmpull.edges.http import MAX_JSON_BODY, advertised_url, bind, start_site, tls_context
from swarmpull.edges.metrics import metrics_route
from swarmpull.edges.openapi import openapi_route
from swarmpull.edges.ratelimit import RateLimiter
from swarmpull.edges.store import PieceStore
from swarmpull.edges.transport import PieceServer

log = logging.getLogger(__name__)


class Supernode:
    """Construct, ``await start()``, use ``url``; ``await stop()`` (safe twice)."""

    def __init__(self, config: SupernodeConfig, clock: Clock | None = None) -> None:
        self.config = config
        self._clock = clock or SystemClock()
        self.metrics = SupernodeMetrics()
        self.url = ""
        self.service: SupernodeService | None = None
        self.store: PieceStore | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._temp_dir: Path | None = None
        self._cluster: ClusterState | None = None
        self._pieces: PieceServer | None = None

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
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256, ssl=tls_context(config.registry_ca)),
            auto_decompress=False,
        )
        limiter = RateLimiter(
            config.seed_upload_limit,
            self._clock,
            on_wait=self.metrics.transfers.limiter_wait.labels("upload").inc,
        )
        pieces = self._pieces = PieceServer(store, self.metrics.transfers, limiter, config.seed_upload_slots)
        store.on_piece = pieces.notify
        sock, bound = bind(config.listen)
        self.url = advertised_url(bound, config.advertise)
        cluster = self._cluster = self._connect_cluster()
        scheduler = Scheduler(config.scheduler)
        scheduler.add_seed(config.seed_id, config.seed_upload_limit)
        seeding = Seeding(config, store, self._session, self._clock, scheduler, signer, cluster, self.metrics)
        service = self.service = SupernodeService(
            config, seeding, scheduler, cluster, signer, self._clock, self.url, self.metrics
        )
        app = web.Application(middlewares=[errors_as_json], client_max_size=MAX_JSON_BODY)
        app.add_routes(
            [
                *SupernodeApi(service).routes(),
                *pieces.routes(),
                metrics_route(self.metrics.registry),
                openapi_route(supernode_openapi),
            ]
        )
        self._runner, _ = await start_site(app, sock, handler_cancellation=True)
        if cluster.shared and not await cluster.ping():
            log.warning(
                "redis at %s does not answer yet; retrying in the background",
                redact_url(config.redis_url or ""),
            )
        await service.start()
        log.info("supernode listening on %s (seed cache %s)", self.url, data_dir)

    def _connect_cluster(self) -> ClusterState:
        config = self.config
        if config.redis_url is None:
            return LocalCluster(self.url, OriginLimits(list(config.origin_limits), self._clock))
        client = RedisCluster.client(config.redis_url, config.redis_password)
        origins = OriginLimits(list(config.origin_limits), self._clock, client, self.url)
        return RedisCluster(client, self.url, config.lease_ttl, self._clock.monotonic, origins)

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
            self.service = None
        if self._pieces is not None:
            self._pieces.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._cluster is not None:
            await self._cluster.close()
            self._cluster = None
        if self.store is not None:
            self.store.close()
            self.store = None
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None


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
