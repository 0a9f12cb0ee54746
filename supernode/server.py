"""The supernode daemon: the API, the seed's piece server and the service, on one port."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import aiohttp
from aiohttp import web

from supernode.api import SupernodeApi, errors_as_json
from supernode.config import SupernodeConfig
from supernode.metrics import SupernodeMetrics
from supernode.replication import Replication
from supernode.service import SupernodeService
from swarmpull.core.clock import Clock, SystemClock
from swarmpull.core.tasks import redact_url
from swarmpull.edges.http import MAX_JSON_BODY, advertised_url, start_site, tls_context
from swarmpull.edges.metrics import metrics_route
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
        self._replication: Replication | None = None

    def __repr__(self) -> str:
        return f"<Supernode {self.url or 'stopped'}>"

    async def start(self) -> None:
        data_dir = self.config.data_dir
        if data_dir is None:
            data_dir = self._temp_dir = Path(tempfile.mkdtemp(prefix="swarmpull-supernode-"))
        self.store = PieceStore(data_dir / "seed", self.config.cache_size)
        self.store.load()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256, ssl=tls_context(self.config.registry_ca)),
            auto_decompress=False,
        )
        self.service = SupernodeService(
            self.config, self.store, self._session, self._clock, lambda: self.url, self.metrics
        )
        app = web.Application(middlewares=[errors_as_json], client_max_size=MAX_JSON_BODY)
        limiter = RateLimiter(
            self.config.seed_upload_limit,
            self._clock,
            on_wait=self.metrics.transfers.limiter_wait.labels("upload").inc,
        )
        pieces = PieceServer(self.store, self.metrics.transfers, limiter, self.config.seed_upload_slots)
        app.add_routes(
            SupernodeApi(self.service).routes() + pieces.routes() + [metrics_route(self.metrics.registry)]
        )
        self._runner, bound = await start_site(app, self.config.listen, handler_cancellation=True)
        self.url = advertised_url(bound, self.config.advertise)
        if self.config.redis_url is not None:  # leases name this replica by its URL
            self._replication = Replication.connect(
                self.config.redis_url,
                self.config.redis_password,
                self.url,
                self.config.lease_ttl,
                self._clock.monotonic,
            )
            self.service.attach(self._replication)
            if not await self._replication.ping():
                log.warning(
                    "redis at %s does not answer yet; retrying in the background",
                    redact_url(self.config.redis_url),
                )
        await self.service.start()
        log.info("supernode listening on %s (seed cache %s)", self.url, data_dir)

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
            self.service = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._replication is not None:
            await self._replication.close()
            self._replication = None
        if self.store is not None:
            self.store.close()
            self.store = None
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None
