"""RegistryAccess against an in-memory registry over loopback: resolving, verified
manifests, pull-rights HEADs with a node's own credential, anonymous tokens, the
supernode's own login, an index walked to the platform's manifest, and outages."""

from __future__ import annotations

import base64
import json

import aiohttp
import pytest
from aiohttp import web

from loadtest.image import build_image, build_index
from loadtest.registry import MiniRegistry
from swarmpull.core.clock import SystemClock
from swarmpull.core.digest import Digest
from swarmpull.core.oci import ACCEPT_ALL, ImageReference, Platform
from swarmpull.edges.http import HostPort, start_site
from swarmpull.edges.registry import (
    ANONYMOUS,
    OWN,
    Credential,
    RegistryAccess,
    RegistryError,
    RegistryOptions,
)
from swarmpull.edges.registry.auth import Authenticator, Credentials, Login

IMAGE = build_image([10_000, 5_000], seed=31)
ARM = build_image([3_000], seed=32)
INDEX = build_index({"linux/amd64": IMAGE, "linux/arm64": ARM})


@pytest.fixture
async def registry():
    server = MiniRegistry()
    server.add("team/app", "v1", IMAGE)
    server.add_index("team/multi", "v1", INDEX, [IMAGE, ARM])
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def access_for(registry, tmp_path):
    sessions = []

    async def make(**options) -> RegistryAccess:
        session = aiohttp.ClientSession()
        sessions.append(session)
        opts = RegistryOptions(insecure_registries=frozenset({registry.host}), **options)
        return RegistryAccess(session, opts, SystemClock())

    yield make
    for session in sessions:
        await session.close()


async def test_a_tag_resolves_with_a_head_and_the_manifest_comes_verified(registry, access_for):
    access = await access_for()
    upstream = access.upstream(registry.host)
    resolved = await access.resolve(upstream, "team/app", "v1", ACCEPT_ALL, ANONYMOUS)
    assert str(resolved.descriptor.digest) == IMAGE.manifest_digest and resolved.manifest is None
    assert resolved.descriptor.size == IMAGE.manifest.size
    assert resolved.descriptor.media_type == IMAGE.manifest.media_type
    manifest = await access.manifest(upstream, "team/app", resolved.descriptor.digest, ACCEPT_ALL, ANONYMOUS)
    assert manifest.data == IMAGE.manifest.data
    assert [str(d.digest) for d in manifest.parsed().blobs] == list(IMAGE.blobs())
    assert registry.requests["HEAD manifests"] == 1 and registry.requests["GET manifests"] == 1
    layer = IMAGE.layers[0]
    descriptor = await access.head(upstream, "team/app", "blobs", layer.digest, ANONYMOUS)
    assert descriptor.size == layer.size


async def test_an_index_is_walked_to_the_platforms_manifest(registry, access_for):
    access = await access_for()
    ref = ImageReference.parse(f"{registry.host}/team/multi:v1")
    manifests = await access.image(ref, Platform.parse("linux/arm64"), ANONYMOUS)
    assert [m.data for m in manifests] == [INDEX.data, ARM.manifest.data]
    everything = await access.image(ref, None, ANONYMOUS)
    assert [m.data for m in everything] == [INDEX.data, IMAGE.manifest.data, ARM.manifest.data]
    with pytest.raises(RegistryError) as caught:
        await access.image(ref, Platform.parse("windows/amd64"), ANONYMOUS)
    assert caught.value.status == 404


async def test_credentials_are_never_mixed(registry, access_for, tmp_path):
    registry.token = "tok"
    registry.login = ("user", "pass")  # the realm gives tokens to this login only
    auth = base64.b64encode(b"user:pass").decode()
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {registry.host: {"auth": auth}}}))
    access = await access_for(credentials=config)
    upstream = access.upstream(registry.host)
    # Our own login (preheat) works...
    assert (await access.head(upstream, "team/app", "manifests", IMAGE.manifest_digest, OWN)).size
    # ...but is never used for a node that came without credentials, or with its own.
    for credential in (ANONYMOUS, Credential.of("Bearer wrong")):
        with pytest.raises(RegistryError) as caught:
            await access.head(upstream, "team/app", "manifests", IMAGE.manifest_digest, credential)
        assert caught.value.status == 401 and caught.value.challenge.startswith("Bearer realm=")
        assert not caught.value.outage
    good = Credential.of("Bearer tok")  # a node's own header goes as it is
    assert (await access.resolve(upstream, "team/app", "v1", ACCEPT_ALL, good)).descriptor.size
    assert good.key != ANONYMOUS.key != OWN.key and "tok" not in repr(good) + good.key


async def test_a_public_registry_gives_anonymous_tokens(registry, access_for):
    registry.token = "public"  # anyone gets it from the realm
    access = await access_for()
    upstream = access.upstream(registry.host)
    assert (await access.resolve(upstream, "team/app", "v1", ACCEPT_ALL, ANONYMOUS)).descriptor.size
    url = upstream.url("team/app", "blobs", IMAGE.layers[0].digest)
    challenge = f'Bearer realm="{registry.url}/token",service="mini",scope="repository:team/app:pull"'
    assert await access.anonymous_authorization(url, challenge) == "Bearer public"
    assert await access.anonymous_authorization(url, 'Basic realm="x"') is None


@pytest.mark.parametrize(("status", "outage"), [(503, True), (429, True), (404, False)])
async def test_failures_say_whether_they_are_an_outage(registry, access_for, status, outage):
    registry.fail_manifests = status
    access = await access_for()
    upstream = access.upstream(registry.host)
    with pytest.raises(RegistryError) as caught:
        await access.resolve(upstream, "team/app", "v1", ACCEPT_ALL, ANONYMOUS)
    assert caught.value.outage is outage


async def test_an_unreachable_registry_is_an_outage(access_for, registry):
    access = await access_for()
    await registry.stop()
    with pytest.raises(RegistryError) as caught:
        await access.resolve(access.upstream(registry.host), "team/app", "v1", ACCEPT_ALL, ANONYMOUS)
    assert caught.value.outage


async def test_a_manifest_that_does_not_match_its_digest_is_refused(access_for):
    """A lying registry: the right headers, other bytes."""
    wanted = Digest.parse(IMAGE.manifest_digest)

    async def lie(request: web.Request) -> web.Response:
        headers = {"Docker-Content-Digest": str(wanted), "Content-Type": IMAGE.manifest.media_type}
        return web.Response(body=ARM.manifest.data, headers=headers)

    app = web.Application()
    app.router.add_get("/v2/{tail:.*}", lie)
    runner, bound = await start_site(app, HostPort("127.0.0.1", 0))
    try:
        session = aiohttp.ClientSession()
        opts = RegistryOptions(insecure_registries=frozenset({str(bound)}))
        access = RegistryAccess(session, opts, SystemClock())
        upstream = access.upstream(str(bound))
        for reference in (IMAGE.manifest_digest, "v1"):
            with pytest.raises(RegistryError) as caught:
                if reference == "v1":
                    await access.image(ImageReference.parse(f"{bound}/app:v1"), None, ANONYMOUS)
                else:
                    await access.manifest(upstream, "app", wanted, ACCEPT_ALL, ANONYMOUS)
            assert caught.value.code == "MANIFEST_INVALID" and not caught.value.outage
        await session.close()
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(("realm_host", "login_sent"), [("127.0.0.2", False), ("127.0.0.1", True)])
async def test_a_login_goes_to_a_plain_http_token_service_only_on_the_registry_host(realm_host, login_sent):
    # A registry names its token service; over plain HTTP on another host, the login would
    # travel in the clear to whoever that is: the token is asked for without it.
    seen: list[str | None] = []

    async def token(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"token": "t", "expires_in": 300})

    app = web.Application()
    app.router.add_get("/token", token)
    runner, bound = await start_site(app, HostPort(realm_host, 0))
    try:
        login = Login("alice", "hunter2")
        async with aiohttp.ClientSession() as session:
            auth = Authenticator(session, Credentials({"127.0.0.1:5000": login}), SystemClock())
            challenge = f'Bearer realm="{bound.url()}/token",service="registry"'
            header = await auth.answer("127.0.0.1:5000", False, challenge, "repository:app:pull")
    finally:
        await runner.cleanup()
    assert header == "Bearer t"
    assert seen == ([login.basic()] if login_sent else [None])
