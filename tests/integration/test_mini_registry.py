"""MiniRegistry, the load test's upstream: the pull API over loopback, and its counters."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter

import aiohttp
import pytest

from loadtest.image import build_image
from loadtest.registry import MiniRegistry
from swarmpull.core.clock import FakeClock

IMAGE = build_image([200_000, 70_000], seed=21)
OTHER = build_image([1_000], seed=22, oci=False)


@pytest.fixture
async def registry():
    server = MiniRegistry()
    server.add("library/app", "v1", IMAGE)
    server.add("tools", "latest", OTHER)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def session():
    async with aiohttp.ClientSession(auto_decompress=False) as client:
        yield client


async def fetch(session, method, url, **kwargs):
    async with session.request(method, url, **kwargs) as resp:
        return resp.status, resp.headers, await resp.read()


async def test_base_endpoint(registry, session):
    status, headers, body = await fetch(session, "GET", f"{registry.url}/v2/")
    assert status == 200
    assert body == b"{}"
    assert headers["Docker-Distribution-API-Version"] == "registry/2.0"


@pytest.mark.parametrize("reference", ["v1", IMAGE.manifest_digest])
async def test_manifest_by_tag_and_by_digest(registry, session, reference):
    url = f"{registry.url}/v2/library/app/manifests/{reference}"
    status, headers, body = await fetch(session, "GET", url)
    assert status == 200
    assert body == IMAGE.manifest.data
    assert headers["Content-Type"] == "application/vnd.oci.image.manifest.v1+json"
    assert headers["Docker-Content-Digest"] == IMAGE.manifest_digest
    assert int(headers["Content-Length"]) == IMAGE.manifest.size

    status, headers, body = await fetch(session, "HEAD", url)
    assert status == 200
    assert body == b""
    assert headers["Docker-Content-Digest"] == IMAGE.manifest_digest
    assert int(headers["Content-Length"]) == IMAGE.manifest.size


async def test_docker_manifest_keeps_its_media_type(registry, session):
    status, headers, _ = await fetch(session, "GET", f"{registry.url}/v2/tools/manifests/latest")
    assert status == 200
    assert headers["Content-Type"] == "application/vnd.docker.distribution.manifest.v2+json"


async def test_blob_get_and_head(registry, session):
    layer = IMAGE.layers[0]
    url = f"{registry.url}/v2/library/app/blobs/{layer.digest}"
    status, headers, body = await fetch(session, "GET", url)
    assert status == 200
    assert "sha256:" + hashlib.sha256(body).hexdigest() == layer.digest
    assert headers["Docker-Content-Digest"] == layer.digest
    assert headers["Accept-Ranges"] == "bytes"
    assert int(headers["Content-Length"]) == layer.size

    status, headers, body = await fetch(session, "HEAD", url)
    assert (status, body, int(headers["Content-Length"])) == (200, b"", layer.size)


async def test_config_is_a_blob(registry, session):
    url = f"{registry.url}/v2/library/app/blobs/{IMAGE.config.digest}"
    status, _, body = await fetch(session, "GET", url)
    assert (status, body) == (200, IMAGE.config.data)


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [("bytes=0-99", 0, 100), ("bytes=1000-", 1000, None), ("bytes=150000-999999", 150000, None)],
)
async def test_range_requests(registry, session, header, start, end):
    layer = IMAGE.layers[0]
    end = layer.size if end is None else end
    url = f"{registry.url}/v2/library/app/blobs/{layer.digest}"
    status, headers, body = await fetch(session, "GET", url, headers={"Range": header})
    assert status == 206
    assert body == layer.data[start:end]
    assert headers["Content-Range"] == f"bytes {start}-{end - 1}/{layer.size}"
    assert int(headers["Content-Length"]) == end - start


async def test_unsatisfiable_range_is_416(registry, session):
    layer = IMAGE.layers[1]
    url = f"{registry.url}/v2/library/app/blobs/{layer.digest}"
    status, headers, _ = await fetch(session, "GET", url, headers={"Range": f"bytes={layer.size}-"})
    assert status == 416
    assert headers["Content-Range"] == f"bytes */{layer.size}"
    assert registry.blob_gets[layer.digest] == 0


async def test_a_range_it_does_not_handle_gets_the_whole_blob(registry, session):
    layer = IMAGE.layers[1]
    url = f"{registry.url}/v2/library/app/blobs/{layer.digest}"
    status, _, body = await fetch(session, "GET", url, headers={"Range": "bytes=0-1,5-9"})
    assert (status, body) == (200, layer.data)


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("library/app/manifests/v9", "MANIFEST_UNKNOWN"),
        ("library/app/manifests/sha256:" + "0" * 64, "MANIFEST_UNKNOWN"),
        ("library/app/blobs/sha256:" + "0" * 64, "BLOB_UNKNOWN"),
        # a blob of another repository is not served here
        (f"library/app/blobs/{OTHER.layers[0].digest}", "BLOB_UNKNOWN"),
        ("library/nope/manifests/v1", "NAME_UNKNOWN"),
        ("nope/blobs/sha256:" + "0" * 64, "NAME_UNKNOWN"),
        ("library/app/tags/list", "UNSUPPORTED"),
    ],
)
async def test_unknown_things_are_oci_errors(registry, session, path, code):
    status, headers, body = await fetch(session, "GET", f"{registry.url}/v2/{path}")
    assert status == 404
    assert headers["Content-Type"].startswith("application/json")
    (error,) = json.loads(body)["errors"]
    assert error["code"] == code
    assert error["message"]
    assert error["detail"] is None


async def test_other_methods_are_405(registry, session):
    status, _, body = await fetch(session, "PUT", f"{registry.url}/v2/library/app/manifests/v1", data=b"{}")
    assert status == 405
    assert json.loads(body)["errors"][0]["code"] == "UNSUPPORTED"
    assert registry.requests["PUT manifests"] == 1


async def test_repository_names_with_slashes_and_keywords(session):
    server = MiniRegistry()
    # "blobs" and "manifests" as name components: only the last one splits
    server.add("team/blobs/manifests/app", "v1", IMAGE)
    await server.start()
    try:
        base = f"{server.url}/v2/team/blobs/manifests/app"
        status, _, body = await fetch(session, "GET", f"{base}/manifests/v1")
        assert (status, body) == (200, IMAGE.manifest.data)
        status, _, body = await fetch(session, "GET", f"{base}/blobs/{IMAGE.config.digest}")
        assert (status, body) == (200, IMAGE.config.data)
    finally:
        await server.stop()


async def test_byte_counters_are_exact(registry, session):
    received = 0
    layer0, layer1 = IMAGE.layers
    for method, path, headers in [
        ("GET", "", {}),
        ("GET", "library/app/manifests/v1", {}),
        ("HEAD", "library/app/manifests/v1", {}),
        ("GET", f"library/app/blobs/{IMAGE.config.digest}", {}),
        ("GET", f"library/app/blobs/{layer0.digest}", {}),
        ("GET", f"library/app/blobs/{layer0.digest}", {"Range": "bytes=100-"}),
        ("HEAD", f"library/app/blobs/{layer1.digest}", {}),
        ("GET", "library/app/manifests/missing", {}),
    ]:
        _, _, body = await fetch(session, method, f"{registry.url}/v2/{path}", headers=headers)
        received += len(body)

    assert registry.bytes_sent == received
    assert registry.blob_bytes_sent == IMAGE.config.size + layer0.size + (layer0.size - 100)
    assert registry.blob_gets == Counter({layer0.digest: 2, IMAGE.config.digest: 1})
    assert registry.requests == Counter(
        {"GET base": 1, "GET manifests": 2, "HEAD manifests": 1, "GET blobs": 3, "HEAD blobs": 1}
    )
    samples = registry.egress
    assert samples
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in itertools.pairwise(samples))
    assert samples[-1][1] <= registry.bytes_sent


async def test_egress_is_sampled_when_time_has_moved(session):
    clock = FakeClock()
    server = MiniRegistry(clock=clock)
    server.add("app", "v1", IMAGE)
    await server.start()
    try:
        url = f"{server.url}/v2/app/blobs/{IMAGE.layers[0].digest}"
        await fetch(session, "GET", url)
        assert server.egress == [(clock.now, 64 * 1024)]  # the first chunk; time stood still
        clock.advance(0.1)
        await fetch(session, "GET", url)
        assert server.egress[-1] == (clock.now, IMAGE.layers[0].size + 64 * 1024)
        assert len(server.egress) == 2
    finally:
        await server.stop()


async def test_a_shaped_registry_still_serves_whole_blobs(session):
    server = MiniRegistry(rate=8 * 1024 * 1024)
    server.add("app", "v1", IMAGE)
    await server.start()
    try:
        for layer in IMAGE.layers:
            _, _, body = await fetch(session, "GET", f"{server.url}/v2/app/blobs/{layer.digest}")
            assert body == layer.data
        assert server.blob_bytes_sent == IMAGE.size
    finally:
        await server.stop()


async def test_fail_blobs_answers_500(registry, session):
    layer = IMAGE.layers[0]
    registry.fail_blobs.add(layer.digest)
    url = f"{registry.url}/v2/library/app/blobs/{layer.digest}"
    status, _, body = await fetch(session, "GET", url)
    assert status == 500
    assert json.loads(body)["errors"][0]["code"]
    assert registry.blob_gets[layer.digest] == 0
    assert registry.blob_bytes_sent == 0

    registry.fail_blobs.discard(layer.digest)
    status, _, body = await fetch(session, "GET", url)
    assert (status, body) == (200, layer.data)


async def test_stop_is_safe_twice():
    server = MiniRegistry()
    await server.start()
    url = server.url
    await server.stop()
    await server.stop()
    async with aiohttp.ClientSession() as client:
        with pytest.raises(aiohttp.ClientConnectionError):
            await client.get(f"{url}/v2/")


def test_add_refuses_invalid_names():
    server = MiniRegistry()
    with pytest.raises(ValueError):
        server.add("Upper/Case", "v1", IMAGE)
    with pytest.raises(ValueError):
        server.add("app", "bad tag", IMAGE)
    with pytest.raises(RuntimeError):
        _ = server.url  # not started
