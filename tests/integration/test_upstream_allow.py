"""SSRF: a supernode reads only upstreams ``--upstream-allow`` allows, loopback included,
at every redirect hop and whatever a name resolves to at connect time."""

from __future__ import annotations

import os
import socket

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from supernode.errors import error_of
from swarmpull.core.blobs import BlobRequest, DownloadFailed
from swarmpull.core.digest import Digest
from swarmpull.core.protocol import OpenTask
from swarmpull.core.upstreams import UpstreamAllow
from swarmpull.edges.http import HostPort, start_site
from swarmpull.edges.upstream_guard import GuardedConnector, UpstreamRefused

MiB = 1024 * 1024


class Redirector:
    """An upstream that answers every GET with a redirect to ``target``."""

    def __init__(self) -> None:
        self.target = ""
        self.url = ""
        self.port = 0
        self.requests = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("GET", "/{path:.*}", self._handle)
        self._runner, bound = await start_site(app, HostPort("127.0.0.1", 0))
        self.url, self.port = bound.url(), bound.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        raise web.HTTPFound(self.target)


@pytest.fixture
async def redirector():
    server = Redirector()
    await server.start()
    yield server
    await server.stop()


async def test_a_supernode_without_the_flag_refuses_a_loopback_upstream(swarm, upstream):
    data = os.urandom(MiB)
    url = upstream.add("internal/secret", data)
    supernode = await swarm.start_supernode(upstream_allow=())  # the default: public hosts only
    (peer,) = await swarm.add_peers(1)
    request = BlobRequest(url, Digest.of(data))
    with pytest.raises(DownloadFailed) as failed:
        await peer.ensure(request).wait_complete()
    message = str(failed.value)
    assert "127.0.0.1" in message and "--upstream-allow" in message
    # The opener gets a 4xx naming the host and the flag; the refusal is not retried.
    (answer,) = await supernode.service.opening.open_tasks(
        peer.peer_id, [OpenTask(peer.peer_id, url, request.digest)]
    )
    assert isinstance(answer, Exception)
    status, body, _ = error_of(answer)
    assert status == 403 and body["error"]["code"] == "UPSTREAM_REFUSED"
    assert "--upstream-allow" in body["error"]["message"]
    assert sum(upstream.requests.values()) == 0  # the upstream saw nothing, from anyone


async def test_a_redirect_from_an_allowed_host_to_a_loopback_one_is_refused(swarm, upstream, redirector):
    data = os.urandom(MiB)
    target = upstream.add("internal/secret", data)
    redirector.target = target
    # Only the redirector's port is allowed: the upstream behind it is another loopback service.
    await swarm.start_supernode(upstream_allow=(f"127.0.0.1:{redirector.port}",))
    (peer,) = await swarm.add_peers(1)
    with pytest.raises(DownloadFailed, match="--upstream-allow"):
        await peer.ensure(BlobRequest(f"{redirector.url}/layer", Digest.of(data))).wait_complete()
    assert redirector.requests == 1
    assert sum(upstream.requests.values()) == 0


async def test_a_redirect_between_allowed_hosts_is_followed(swarm, upstream, redirector):
    data = os.urandom(MiB)
    redirector.target = upstream.add("layer", data)
    await swarm.start_supernode()  # the test kit allows 127.0.0.1, every port
    (peer,) = await swarm.add_peers(1)
    blob = await peer.ensure(BlobRequest(f"{redirector.url}/layer", Digest.of(data))).wait_complete()
    assert (peer.config.data_dir / "blobs" / f"{blob.task_id}.data").read_bytes() == data
    assert upstream.requests["/layer"] == 1


async def test_a_redirect_to_another_origin_carries_no_header_that_may_be_a_credential(
    swarm, upstream, redirector
):
    data = os.urandom(MiB)
    seen: list[dict[str, str]] = []

    async def storage(request: web.Request) -> web.Response:  # another origin: another port
        seen.append(dict(request.headers))
        return web.Response(body=data)

    app = web.Application()
    app.router.add_get("/{path:.*}", storage)
    runner, bound = await start_site(app, HostPort("127.0.0.1", 0))
    try:
        redirector.target = f"{bound.url()}/signed-url"
        await swarm.start_supernode()
        (peer,) = await swarm.add_peers(1)
        secrets = {"Authorization": "Bearer t", "Cookie": "s=1", "X-Api-Key": "k", "Proxy-Authorization": "p"}
        request = BlobRequest(f"{redirector.url}/layer", Digest.of(data), {**secrets, "Accept": "*/*"})
        await peer.ensure(request).wait_complete()
    finally:
        await runner.cleanup()
    assert seen, "the redirect was not followed"
    for headers in seen:
        assert not set(secrets) & set(headers), headers
        assert headers.get("Accept") == "*/*"


class PointsAtLoopback(AbstractResolver):
    """A name server under an attacker's control: its name resolves to loopback (as a
    rebinding name does once its short TTL has run out)."""

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        return [
            {
                "hostname": host,
                "host": "127.0.0.1",
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": 0,
            }
        ]

    async def close(self) -> None:
        pass


async def test_a_name_is_judged_by_the_address_it_resolves_to_when_connecting(upstream):
    connector = GuardedConnector(UpstreamAllow(), resolver=PointsAtLoopback(), use_dns_cache=False)
    port = upstream.url.rsplit(":", 1)[1]
    async with aiohttp.ClientSession(connector=connector) as session:
        with pytest.raises(UpstreamRefused, match=r"rebind\.test \(127\.0\.0\.1\) is a loopback"):
            await session.get(f"http://rebind.test:{port}/layer")
    assert sum(upstream.requests.values()) == 0


class Challenger:
    """A registry whose 401 names a token realm elsewhere (another loopback service)."""

    def __init__(self, realm: str) -> None:
        self.realm = realm
        self.url = ""
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("GET", "/{path:.*}", self._handle)
        self._runner, bound = await start_site(app, HostPort("127.0.0.1", 0))
        self.url, self.port = bound.url(), bound.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        challenge = f'Bearer realm="{self.realm}",service="registry",scope="repository:app:pull"'
        return web.Response(status=401, headers={"WWW-Authenticate": challenge})


async def test_a_token_realm_is_checked_like_any_upstream(swarm, upstream):
    """The realm comes from the registry's answer: it is no way around the rule."""
    realm = upstream.url_of("token")  # a loopback service the operator did not allow
    registry = Challenger(realm)
    await registry.start()
    try:
        await swarm.start_supernode(upstream_allow=(f"127.0.0.1:{registry.port}",))
        (peer,) = await swarm.add_peers(1)
        digest = Digest.of(b"layer")
        with pytest.raises(DownloadFailed, match="401"):
            await peer.ensure(BlobRequest(f"{registry.url}/v2/app/blobs/{digest}", digest)).wait_complete()
        assert upstream.requests["/token"] == 0  # the realm was never asked
    finally:
        await registry.stop()
