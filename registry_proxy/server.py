"""The registry proxy: the OCI distribution pull API on each node, for containerd.

Every request is parsed into a ``DistributionPath`` first. Manifests and tags pass
straight through to the upstream (small and mutable; media types and
``Docker-Content-Digest`` kept exactly, a manifest asked for by digest checked against
it); blobs go through the swarm (``blobs``). A request marked as coming from another
swarmpull node is refused, so proxies can never mirror each other in a loop.
"""

from __future__ import annotations

import hashlib
import logging

import aiohttp
from aiohttp import web

from registry_proxy.blobs import BlobQuery, BlobSource, get_blob, head_blob
from registry_proxy.config import ProxyConfig
from registry_proxy.errors import OciError, unsupported
from registry_proxy.paths import DistributionPath, Kind, parse_path
from swarmpull.core.clock import Clock, SystemClock
from swarmpull.core.oci import MAX_MANIFEST
from swarmpull.edges.http import PEER_HEADER, start_site, tls_context
from swarmpull.edges.registry import Registries, RegistryError, Upstream
from swarmpull.edges.registry.auth import Authenticator, Credentials
from swarmpull.edges.registry.client import RegistryClient

log = logging.getLogger(__name__)

API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}
_MANIFEST_HEADERS = ("Content-Type", "Docker-Content-Digest", "ETag", "Last-Modified")


class RegistryProxy:
    """Construct with the peer daemon to pull blobs through; ``start()``, ``stop()``."""

    def __init__(self, config: ProxyConfig, source: BlobSource | None, clock: Clock | None = None) -> None:
        self.config = config
        self._source = source
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

    async def start(self) -> None:
        options = self.config.registry
        connector = aiohttp.TCPConnector(limit=64, ssl=tls_context(options.ca))
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        auth = Authenticator(self._session, self._credentials, self._clock)
        self._client = RegistryClient(self._session, auth, options.request_timeout, self.config.stall_timeout)
        app = web.Application()
        app.router.add_route("GET", "/v2{tail:.*}", self.handle)
        app.router.add_route("HEAD", "/v2{tail:.*}", self.handle)
        app.router.add_route("*", "/{tail:.*}", self.refuse)
        self._runner, bound = await start_site(app, self.config.listen)
        self.url = bound.url()
        log.info(
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
                return await self._manifest(request, path, upstream)
            query = BlobQuery(path, upstream, request.headers.get("Authorization"))
            if request.method == "HEAD":
                return await head_blob(self.client, query)
            return await get_blob(request, self.client, query, self._source)
        except OciError as exc:
            return exc.response()
        except RegistryError as exc:
            return OciError.of(exc).response()

    def _upstream(self, ns: str | None) -> Upstream:
        try:
            return self._registries.resolve(ns)
        except ValueError as exc:
            raise OciError(400, "NAME_INVALID", str(exc)) from None

    async def _manifest(
        self, request: web.Request, path: DistributionPath, upstream: Upstream
    ) -> web.Response:
        accept = ", ".join(request.headers.getall("Accept", [])) or "*/*"
        resp = await self.client.send(
            request.method,
            upstream,
            path.name,
            "manifests",
            path.reference,
            headers={"Accept": accept},
            client_auth=request.headers.get("Authorization"),
        )
        try:
            body = b"" if request.method == "HEAD" else await resp.content.read(MAX_MANIFEST + 1)
            if len(body) > MAX_MANIFEST:
                raise OciError(502, "MANIFEST_INVALID", f"upstream manifest larger than {MAX_MANIFEST} bytes")
            headers = {k: resp.headers[k] for k in _MANIFEST_HEADERS if k in resp.headers}
            if resp.status == 401 and "WWW-Authenticate" in resp.headers:
                headers["WWW-Authenticate"] = resp.headers["WWW-Authenticate"]
            if resp.status == 200 and path.digest is not None and request.method == "GET":
                actual = hashlib.sha256(body).hexdigest()
                if actual != path.digest.hex:
                    raise OciError(
                        502,
                        "MANIFEST_INVALID",
                        f"upstream manifest hashes to sha256:{actual}, not {path.reference}",
                    )
            if request.method == "HEAD" and resp.content_length is not None:
                headers["Content-Length"] = str(resp.content_length)
                return web.Response(status=resp.status, headers=headers)
            return web.Response(status=resp.status, body=body, headers=headers)
        finally:
            resp.release()
