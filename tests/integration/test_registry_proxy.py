"""The registry proxy over loopback: an in-memory registry upstream, a supernode, nodes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import aiohttp
import pytest

from loadtest.client import pull_image
from loadtest.image import Blob, Image, build_image
from loadtest.registry import MiniRegistry
from registry_proxy import blobs
from swarmpull.edges.http import PEER_HEADER
from tests.kit.nodes import MANIFEST_TYPES, start_node
from tests.kit.supernodes import start_supernode

KiB, MiB = 1024, 1024 * 1024


@pytest.fixture
async def registry():
    registry = MiniRegistry()
    await registry.start()
    yield registry
    await registry.stop()


@pytest.fixture
async def cluster(tmp_path):
    """Start nodes on demand; everything stops at the end."""
    started = []

    class Cluster:
        supernode = None

        async def nodes(self, count: int, registry: MiniRegistry, **peer):
            if self.supernode is None:
                self.supernode = await start_supernode(piece_size=256 * KiB, insecure=(registry.host,))
                started.append(self.supernode)
            new = []
            for _ in range(count):
                node = await start_node(
                    tmp_path / f"node{len(started)}", (self.supernode.url,), (registry.host,), **peer
                )
                started.append(node)
                new.append(node)
            return new

    yield Cluster()
    for thing in reversed(started):
        await thing.stop()


async def test_three_nodes_pull_an_image_and_the_registry_sends_each_blob_once(registry, cluster):
    image = build_image([2 * MiB, 1 * MiB, 512 * KiB], seed=3)
    registry.add("team/app", "v1", image)
    nodes = await cluster.nodes(3, registry)
    async with aiohttp.ClientSession() as session:
        pulls = await asyncio.gather(
            *(pull_image(session, n.proxy.url, "team/app", "v1", ns=registry.host, keep=True) for n in nodes)
        )
    for pulled in pulls:
        assert pulled.data == {d: b.data for d, b in image.blobs().items()}
    assert registry.blob_gets == {digest: 1 for digest in image.blobs()}  # once, whatever the nodes
    # The manifest once, the tag resolved once (it also checked the nodes' anonymous
    # rights), the blobs' sizes from the manifest: O(layers), whatever the nodes.
    assert registry.requests == {"HEAD manifests": 1, "GET manifests": 1, "GET blobs": len(image.blobs())}


async def test_the_proxy_hashes_only_what_the_upstream_sends(registry, cluster, monkeypatch):
    """Bytes from the swarm are verified already (pieces, then the whole digest): a blob it
    serves whole is not hashed a third time. When the swarm gives up (a lying upstream),
    the proxy hashes the upstream's bytes, all of them, and cuts the answer."""
    fed: list[int] = []
    feed = blobs._Checked.feed

    def counted(self, chunk):
        fed.append(len(chunk))
        feed(self, chunk)

    monkeypatch.setattr(blobs._Checked, "feed", counted)
    image = build_image([1 * MiB, 1 * MiB], seed=5)
    registry.add("app", "v1", image)
    honest, lying = image.layers
    registry.corrupt_blobs.add(lying.digest)
    (node,) = await cluster.nodes(1, registry)
    async with aiohttp.ClientSession() as session:
        url = f"{node.proxy.url}/v2/app/blobs/{honest.digest}?ns={registry.host}"
        async with session.get(url) as resp:
            assert resp.status == 200 and await resp.read() == honest.data
        assert fed == []
        url = f"{node.proxy.url}/v2/app/blobs/{lying.digest}?ns={registry.host}"
        with pytest.raises(aiohttp.ClientPayloadError):
            async with session.get(url) as resp:
                await resp.read()
    assert sum(fed) == len(lying.data)  # from the first byte, whatever the swarm had sent


async def test_manifests_pass_through_exactly(registry, cluster):
    image = build_image([100 * KiB], seed=4, oci=False)
    registry.add("app", "latest", image)
    (node,) = await cluster.nodes(1, registry)
    url = f"{node.proxy.url}/v2/app/manifests/latest?ns={registry.host}"
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers={"Accept": MANIFEST_TYPES}) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == image.manifest.media_type
            assert resp.headers["Docker-Content-Digest"] == image.manifest_digest
            assert await resp.read() == image.manifest.data
        async with session.head(url) as resp:
            assert resp.status == 200 and int(resp.headers["Content-Length"]) == image.manifest.size
        async with session.get(f"{node.proxy.url}/v2/?ns={registry.host}") as resp:
            assert resp.status == 200 and resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"


async def test_range_requests_are_served_from_the_pieces_they_cover(registry, cluster):
    image = build_image([3 * MiB], seed=5)
    registry.add("app", "v1", image)
    (node,) = await cluster.nodes(1, registry)
    layer = image.layers[0]
    url = f"{node.proxy.url}/v2/app/blobs/{layer.digest}?ns={registry.host}"
    async with aiohttp.ClientSession() as session:
        for first, last in ((0, 99), (300 * KiB, 900 * KiB), (layer.size - 10, layer.size - 1)):
            async with session.get(url, headers={"Range": f"bytes={first}-{last}"}) as resp:
                assert resp.status == 206
                assert resp.headers["Content-Range"] == f"bytes {first}-{last}/{layer.size}"
                assert await resp.read() == layer.data[first : last + 1]
        async with session.get(url, headers={"Range": f"bytes={layer.size}-"}) as resp:
            assert resp.status == 416
            assert (await resp.json())["errors"][0]["code"] == "UNSUPPORTED"
        huge = "9" * 5000  # past what Python turns into an int by default
        for spec in (f"bytes={huge}-", f"bytes=0-{huge}", f"bytes=-{huge}"):
            async with session.get(url, headers={"Range": spec}) as resp:
                assert resp.status == 200  # not a range we serve: the whole blob, as RFC 9110 allows
                assert await resp.read() == layer.data
    assert registry.blob_gets[layer.digest] == 1  # every range came from the swarm's one read


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v2/Bad_Name/manifests/v1", 400, "NAME_INVALID"),
        ("/v2/app/blobs/sha256:xyz", 400, "DIGEST_INVALID"),
        ("/v2/app/blobs/sha256:" + "0" * 64, 404, "BLOB_UNKNOWN"),
        ("/v2/app/manifests/nope", 404, "MANIFEST_UNKNOWN"),
        # Tags resolve with a HEAD, whose answer has no body to tell which part is unknown.
        ("/v2/unknown/manifests/v1", 404, "MANIFEST_UNKNOWN"),
    ],
)
async def test_bad_requests_get_oci_errors(registry, cluster, path, status, code):
    registry.add("app", "v1", build_image([10 * KiB], seed=6))
    (node,) = await cluster.nodes(1, registry)
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{node.proxy.url}{path}?ns={registry.host}") as resp,
    ):
        assert resp.status == status
        assert (await resp.json())["errors"][0]["code"] == code


async def test_writes_loops_and_bad_ns_are_refused(registry, cluster):
    registry.add("app", "v1", build_image([10 * KiB], seed=6))
    (node,) = await cluster.nodes(1, registry)
    base = node.proxy.url
    async with aiohttp.ClientSession() as session:
        async with session.put(f"{base}/v2/app/manifests/v1", data=b"{}") as resp:
            assert resp.status == 405 and (await resp.json())["errors"][0]["code"] == "UNSUPPORTED"
        async with session.get(
            f"{base}/v2/app/manifests/v1?ns={registry.host}", headers={PEER_HEADER: "x"}
        ) as resp:
            assert resp.status == 403 and (await resp.json())["errors"][0]["code"] == "DENIED"
        async with session.get(f"{base}/v2/app/manifests/v1?ns=bad/host") as resp:
            assert resp.status == 400 and (await resp.json())["errors"][0]["code"] == "NAME_INVALID"
    assert registry.requests["GET manifests"] == 0  # none of it reached the registry


async def test_a_lying_upstream_never_gets_wrong_bytes_through(registry, cluster):
    image = build_image([1 * MiB], seed=7)
    registry.add("app", "v1", image)
    layer = image.layers[0]
    registry.corrupt_blobs.add(layer.digest)
    nodes = await cluster.nodes(2, registry)
    url = f"{nodes[0].proxy.url}/v2/app/blobs/{layer.digest}?ns={registry.host}"
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            try:
                async with session.get(url) as resp:
                    data = await resp.read()
            except aiohttp.ClientPayloadError:
                continue  # cut before the last byte: nothing whole arrived
            assert resp.status >= 400 and data != layer.data  # an error, never the bytes
    for node in nodes:
        blob = node.peer.store.get(f"sha256-{layer.digest.split(':')[1]}")
        assert blob is None or not blob.complete  # nothing wrong is kept either


@pytest.mark.parametrize("lie", [-100 * KiB, +100 * KiB])
async def test_a_manifest_that_lies_about_a_layer_size_gets_no_blob_served_under_it(registry, cluster, lie):
    honest = build_image([300 * KiB], seed=9)
    layer = honest.layers[0]
    document = json.loads(honest.manifest.data)
    document["layers"][0]["size"] = layer.size + lie
    lying = Image(
        Blob(honest.manifest.media_type, json.dumps(document).encode()),
        honest.config,
        honest.layers,
        honest.diff_ids,
    )
    registry.add("app", "v1", lying)
    (node,) = await cluster.nodes(1, registry)
    base = f"{node.proxy.url}/v2/app"
    async with aiohttp.ClientSession() as session:
        headers = {"Accept": ", ".join(MANIFEST_TYPES)}
        async with session.get(f"{base}/manifests/v1?ns={registry.host}", headers=headers) as resp:
            assert resp.status == 200  # the manifest is what its digest says: passed on
        async with session.get(f"{base}/blobs/{layer.digest}?ns={registry.host}") as resp:
            body = await resp.read()
            # Not a 200 whose bytes fail the digest, nor a 500: a registry error, in OCI JSON.
            assert resp.status == 502, (resp.status, body[:200])
            assert json.loads(body)["errors"][0]["code"] == "UNKNOWN"
            assert "descriptor" in json.loads(body)["errors"][0]["message"]


async def test_a_token_protected_registry(registry, cluster):
    image = build_image([512 * KiB, 256 * KiB], seed=8)
    registry.add("private/app", "v1", image)
    registry.token = "t0k3n-abc"
    nodes = await cluster.nodes(2, registry)
    async with aiohttp.ClientSession() as session:
        for node in nodes:
            blobs = (
                await pull_image(session, node.proxy.url, "private/app", "v1", ns=registry.host, keep=True)
            ).data
            assert blobs == {d: b.data for d, b in image.blobs().items()}
    assert registry.requests["GET token"] >= 1
    assert registry.blob_gets == {digest: 1 for digest in image.blobs()}  # the supernode used the token


async def test_a_client_token_past_8_kib_is_no_bad_request(registry, cluster):
    image = build_image([64 * KiB], seed=10)
    registry.add("team/app", "v1", image)
    (node,) = await cluster.nodes(1, registry)
    digest, blob = next(iter(image.blobs().items()))
    url = f"{node.proxy.url}/v2/team/app/blobs/{digest}?ns={registry.host}"
    headers = {"Authorization": "Bearer " + "t" * 20_000}  # a JWT with many claims
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        assert resp.status == 200, await resp.text()  # before: aiohttp's plain-text 400
        assert await resp.read() == blob.data


async def test_missing_credentials_are_an_unauthorized_error(registry, cluster):
    registry.add("private/app", "v1", build_image([10 * KiB], seed=9))
    registry.token = "secret"
    registry.login = ("user", "pass")  # the realm wants a login we do not have
    (node,) = await cluster.nodes(1, registry)
    url = f"{node.proxy.url}/v2/private/app/manifests/v1?ns={registry.host}"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 401
        assert (await resp.json())["errors"][0]["code"] == "UNAUTHORIZED"
        assert resp.headers["WWW-Authenticate"].startswith("Bearer realm=")


async def test_a_failing_upstream_is_an_error_not_a_hang(registry, cluster):
    image = build_image([256 * KiB], seed=10)
    registry.add("app", "v1", image)
    registry.fail_blobs.add(image.layers[0].digest)
    (node,) = await cluster.nodes(1, registry)
    url = f"{node.proxy.url}/v2/app/blobs/{image.layers[0].digest}?ns={registry.host}"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 502
        assert (await resp.json())["errors"][0]["code"] == "UNKNOWN"


async def test_without_a_supernode_the_proxy_still_serves_verified_blobs(registry, tmp_path):
    image = build_image([1 * MiB, 300 * KiB], seed=11)
    registry.add("app", "v1", image)
    node = await start_node(tmp_path / "lonely", ("http://127.0.0.1:9",), (registry.host,), direct_jitter=0.0)
    try:
        async with aiohttp.ClientSession() as session:
            blobs = (await pull_image(session, node.proxy.url, "app", "v1", ns=registry.host, keep=True)).data
        assert blobs == {d: b.data for d, b in image.blobs().items()}
    finally:
        await node.stop()


@contextlib.asynccontextmanager
async def one_layer_behind_a_slow_registry(cluster, rate: int, seed: int):
    """A registry sending ``rate`` bytes a second, a 1 MiB layer in it, and one node:
    ``(registry, node, the layer's URL at the node's proxy)``."""
    registry = MiniRegistry(rate=rate)
    await registry.start()
    try:
        image = build_image([1 * MiB], seed=seed)
        registry.add("app", "v1", image)
        (node,) = await cluster.nodes(1, registry)
        yield registry, node, f"{node.proxy.url}/v2/app/blobs/{image.layers[0].digest}?ns={registry.host}"
    finally:
        await registry.stop()


async def test_a_node_stopping_under_a_pull_answers_503_and_reads_nothing_upstream(cluster):
    """A pull under way when its node's daemon stops: the client hears 503 (pull again)
    and the proxy does not read the blob from the registry instead (at a restart, every
    pull under way would)."""
    # the supernode's read of the layer takes 16 s
    async with one_layer_behind_a_slow_registry(cluster, 64 * KiB, seed=12) as (registry, node, url):
        async with aiohttp.ClientSession() as session:
            pull = asyncio.ensure_future(session.get(url))
            while registry.requests["GET blobs"] < 1:  # the node opened the task, the supernode reads
                await asyncio.sleep(0.05)
            await node.peer.stop()
            async with await pull as resp:
                assert resp.status == 503, await resp.text()
                assert resp.headers["Retry-After"] == "1"
                error = (await resp.json())["errors"][0]
        assert error["code"] == "UNKNOWN" and "shutting down" in error["message"]
        assert registry.requests["GET blobs"] == 1  # the supernode's read, nothing from the proxy


async def test_a_client_that_leaves_mid_blob_is_no_error(cluster, caplog):
    """containerd cancelled, or timed out: the proxy's next write finds the connection
    closed. That is the client's choice, logged as such, not a server error with a
    traceback for every blob of every cancelled pull."""
    caplog.set_level(logging.INFO)
    # a piece of the layer every second
    async with one_layer_behind_a_slow_registry(cluster, 256 * KiB, seed=13) as (_, node, url):
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            assert resp.status == 200
            assert await resp.content.readany()  # the first bytes, then we leave
        ended = node.peer.metrics.registry.get_sample_value
        for _ in range(100):  # until the proxy tried its next write, and the download ended
            noticed = any("the client left" in r.getMessage() for r in caplog.records)
            if noticed and ended("swarmpull_peer_blobs_total", {"outcome": "abandoned"}):
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the proxy never noticed the client had left, or its download went on")
    # The download nobody reads any more is abandoned: not a failure to alert on.
    assert ended("swarmpull_peer_blobs_total", {"outcome": "failed"}) is None
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
