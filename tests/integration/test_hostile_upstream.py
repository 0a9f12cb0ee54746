"""A hostile upstream registry against the registry proxy on its own (no supernode: the
proxy's fallback path): nothing it says about a blob or a manifest reaches a client
unchecked, and its broken answers are OCI errors (attack round 8)."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from registry_proxy.config import ProxyConfig
from registry_proxy.server import RegistryProxy
from swarmpull.edges.http import HostPort
from swarmpull.edges.registry import RegistryOptions

MANIFEST = json.dumps({
    "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "x", "digest": "sha256:" + "0" * 64, "size": 1}, "layers": [],
}).encode()  # fmt: skip
GOOD = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
BLOB = "sha256:" + hashlib.sha256(b"the real layer").hexdigest()
EMPTY = "sha256:" + hashlib.sha256(b"").hexdigest()


async def hostile(request: web.Request) -> web.StreamResponse:
    if "/blobs/" in request.path:  # every blob "is empty"
        return web.Response(headers={"Content-Length": "0"})
    if request.path.endswith("/manifests/short"):  # promises 1000 bytes, sends 10, hangs up
        resp = web.StreamResponse(headers={"Content-Length": "1000", "Content-Type": "application/json"})
        await resp.prepare(request)
        await resp.write(b"{" * 10)
        assert request.transport is not None
        request.transport.close()
        return resp
    # the manifest asked for by its digest, labelled with another digest
    headers = {"Content-Type": "application/vnd.oci.image.manifest.v1+json", "Docker-Content-Digest": EMPTY}
    if request.method == "HEAD":
        return web.Response(headers={**headers, "Content-Length": str(len(MANIFEST))})
    return web.Response(body=MANIFEST, headers=headers)


@contextlib.asynccontextmanager
async def proxy_before_hostile() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hostile)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host = f"127.0.0.1:{runner.addresses[0][1]}"
    options = RegistryOptions(default_registry=host, insecure_registries=frozenset({host}))
    proxy = RegistryProxy(ProxyConfig(listen=HostPort("127.0.0.1", 0), registry=options), source=None)
    await proxy.start()
    try:
        yield proxy.url
    finally:
        await proxy.stop()
        await runner.cleanup()


async def test_an_upstream_saying_a_blob_is_empty_gets_no_empty_body_served_as_it():
    async with proxy_before_hostile() as url, aiohttp.ClientSession() as session:
        async with session.get(f"{url}/v2/app/blobs/{BLOB}") as resp:
            body = await resp.json()
            assert resp.status == 502 and "empty" in body["errors"][0]["message"]
        async with session.head(f"{url}/v2/app/blobs/{BLOB}") as resp:
            assert resp.status == 502
        async with session.get(f"{url}/v2/app/blobs/{EMPTY}") as resp:  # the empty blob is
            assert resp.status == 200 and await resp.read() == b""


async def test_a_manifest_by_digest_is_labelled_with_that_digest():
    async with proxy_before_hostile() as url, aiohttp.ClientSession() as session:
        for method in ("GET", "HEAD"):
            async with session.request(method, f"{url}/v2/app/manifests/{GOOD}") as resp:
                await resp.read()
                assert resp.status == 200 and resp.headers["Docker-Content-Digest"] == GOOD, method


async def test_a_manifest_cut_short_is_an_oci_error():
    async with proxy_before_hostile() as url, aiohttp.ClientSession() as session:
        resp = await session.get(f"{url}/v2/app/manifests/short")
        body = await resp.json()
        assert resp.status == 502 and body["errors"][0]["code"] == "UNKNOWN"
