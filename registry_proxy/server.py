"""The registry proxy: the OCI distribution pull API on each node, for containerd.

Every request is parsed into a ``DistributionPath`` first. Manifests come from what the
cluster holds, or straight from the upstream when it cannot answer (``manifests``);
blobs go through the swarm (``blobs``). A request marked as coming from another
swarmpull node is refused, so proxies can never mirror each other in a loop.
"""

from __future__ import annotations

import logging
import socket

import aiohttp
from aiohttp import web

from registry_proxy.blobs import BlobQuery, BlobSource, get_blob, head_blob
from registry_proxy.cluster import ClusterRegistry
from registry_proxy.config import ProxyConfig
from registry_proxy.errors import OciError, unsupported
from registry_proxy.manifests import serve_manifest
from registry_proxy.paths import Kind, parse_path
from swarmpull.core.blobs import DownloadFailed
from swarmpull.core.clock import Clock, SystemClock
from swarmpull.core.digest import Digest
from swarmpull.core.oci import ImageReference
from swarmpull.edges.http import PEER_HEADER, start_site, tls_context
from swarmpull.edges.registry import Registries, RegistryError, Upstream
from swarmpull.edges.registry.auth import Authenticator, Credentials
from swarmpull.edges.registry.client import RegistryClient

log = logging.getLogger(__name__)

API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}
DENIED = (401, 403, 404)  # the registry's no to a login (404: a repository it may not see)


class RegistryProxy:
    """Construct with the peer daemon to pull blobs through; ``start()``, ``stop()``."""

    def __init__(
        self,
        config: ProxyConfig,
        source: BlobSource | None,
        clock: Clock | None = None,
        cluster: ClusterRegistry | None = None,
    ) -> None:
        self.config = config
        self._source = source
        self._cluster = cluster
        self._clock = clock or SystemClock()
        options = config.registry
        self._registries = Registries(options.default_registry, options.insecure_registries)
        self._credentials = Credentials.load(options.credentials)
        self._session: aiohttp.ClientSession | None = None
        self._client: RegistryClient | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    def __repr__(self) -> str:
        return f"<RegistryProxy {self.url or 'stopped'}>"

    async def start(self, sock: socket.socket | None = None) -> None:
        """Serve at ``config.listen``, or on ``sock`` when the caller bound it already."""
        options = self.config.registry
        connector = aiohttp.TCPConnector(limit=64, ssl=tls_context(options.ca))
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        auth = Authenticator(self._session, self._credentials, self._clock)
        self._client = RegistryClient(self._session, auth, options.request_timeout, self.config.stall_timeout)
        app = web.Application()
        app.router.add_route("GET", "/v2{tail:.*}", self.handle)
        app.router.add_route("HEAD", "/v2{tail:.*}", self.handle)
        app.router.add_route("*", "/{tail:.*}", self.refuse)
        self._runner, bound = await start_site(
            app,
            sock if sock is not None else self.config.listen,
            # Registry tokens (JWTs with many claims) run past aiohttp's 8 KiB per header,
            # which it refused with a plain-text 400: a client's pull failed. 128 headers
            # (aiohttp's count) of 64 KiB bound what one request's header holds.
            max_field_size=64 * 1024,
            max_line_size=16 * 1024,
        )
        self.url = bound.url()
        log.debug(
            "registry proxy listening on %s (default upstream %s)",
            self.url,
            self.config.registry.default_registry,
        )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def client(self) -> RegistryClient:
        if self._client is None:
            raise RuntimeError("the registry proxy is not started")
        return self._client

    async def own_login(self, image: str, digest: Digest) -> tuple[str, dict[str, str]]:
        """The URL of ``image``'s blob ``digest`` and the headers of this node's own login
        (``--registry-auth``), once a HEAD with it found the blob (a private preheat opens
        its task with them). DownloadFailed (``denied`` when the registry said no)."""
        try:
            ref = ImageReference.parse(f"{image}@{digest}")
            upstream = self._registries.resolve(ref.host)
            resp = await self.client.send("HEAD", upstream, ref.name, "blobs", str(digest))
        except ValueError as exc:
            raise DownloadFailed(f"cannot pull {image}: {exc}") from None
        except RegistryError as exc:
            raise DownloadFailed(
                f"{image}@{digest}: {exc}", exc.status, denied=exc.status in DENIED
            ) from None
        resp.release()
        if resp.status != 200:
            what = f"{upstream.host} answered {resp.status} to this node's login for {image}@{digest}"
            raise DownloadFailed(what, resp.status, denied=resp.status in DENIED)
        header = self.client.authorization(upstream, ref.name)
        return upstream.url(ref.name, "blobs", str(digest)), ({"Authorization": header} if header else {})

    async def refuse(self, request: web.Request) -> web.Response:
        if request.path.startswith("/v2"):
            return unsupported(f"{request.method} is not supported: this is a pull-only mirror").response()
        return OciError(404, "NOT_FOUND", f"{request.path} is not part of the registry API").response()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            if PEER_HEADER in request.headers:
                raise OciError(403, "DENIED", "request came from another swarmpull node: not mirrored")
            path = parse_path(request.path)
            if path.kind is Kind.BASE:
                return web.json_response({}, headers=API_VERSION)
            upstream = self._upstream(request.query.get("ns"))
            if path.kind is Kind.MANIFEST:
                return await serve_manifest(request, path, upstream, self.client, self._cluster)
            query = BlobQuery(path, upstream, request.headers.get("Authorization"))
            if request.method == "HEAD":
                return await head_blob(self.client, query, self._cluster)
            return await get_blob(request, self.client, query, self._source, self._cluster)
        except OciError as exc:
            return exc.response()
        except RegistryError as exc:
            return OciError.of(exc).response()

    def _upstream(self, ns: str | None) -> Upstream:
        try:
            return self._registries.resolve(ns)
        except ValueError as exc:
            raise OciError(400, "NAME_INVALID", str(exc)) from None
