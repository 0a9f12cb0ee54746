"""The end-to-end services themselves: an image built by loadtest.image, pushed to a real
registry, pulled and unpacked by real containerd instances, each blob read as counted."""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp
import pytest

from loadtest.image import build_image, push_image
from loadtest.registry import MiniRegistry
from tests.kit.services import write_hosts_dir

LAYERS = [200_000, 200_000, 200_000]


@pytest.mark.parametrize(
    ("oci", "compress"),
    [(True, True), (False, True), (True, False), (False, False)],
    ids=["oci-gzip", "docker-gzip", "oci-tar", "docker-tar"],
)
async def test_containerd_pulls_and_unpacks_a_pushed_image(
    docker_registry, containerd_factory, tmp_path, oci, compress
):
    image = build_image(LAYERS, seed=11, oci=oci, compress=compress)
    async with aiohttp.ClientSession() as session:
        await push_image(session, docker_registry.url, "e2e/app", "v1", image)
    hosts = write_hosts_dir(tmp_path / "hosts", docker_registry.host)
    containerd = await containerd_factory()
    ref = f"{docker_registry.host}/e2e/app:v1"

    assert not await containerd.is_unpacked(ref)
    await containerd.pull(ref, hosts)

    assert await containerd.is_unpacked(ref)
    # Each layer and the config read exactly once, nothing else read as a blob.
    assert docker_registry.blob_gets() == Counter(image.blobs().keys())


async def test_two_containerd_instances_pull_at_once(docker_registry, containerd_factory, tmp_path):
    image = build_image(LAYERS, seed=12)
    async with aiohttp.ClientSession() as session:
        await push_image(session, docker_registry.url, "e2e/team/app", "v2", image)
        await push_image(session, docker_registry.url, "e2e/team/app", "v2", image)  # idempotent
    hosts = write_hosts_dir(tmp_path / "hosts", docker_registry.host)
    first, second = await containerd_factory(), await containerd_factory()
    ref = f"{docker_registry.host}/e2e/team/app:v2"

    await asyncio.gather(first.pull(ref, hosts), second.pull(ref, hosts))

    assert await first.is_unpacked(ref)
    assert await second.is_unpacked(ref)
    gets = docker_registry.blob_gets()
    assert {layer.digest: gets[layer.digest] for layer in image.layers} == {
        layer.digest: 2 for layer in image.layers
    }
    assert first.root != second.root


async def test_a_pull_of_an_unknown_tag_fails_with_ctrs_message(
    docker_registry, containerd_factory, tmp_path
):
    hosts = write_hosts_dir(tmp_path / "hosts", docker_registry.host)
    containerd = await containerd_factory()
    ref = f"{docker_registry.host}/e2e/missing:v1"

    with pytest.raises(RuntimeError, match="not found"):
        await containerd.pull(ref, hosts)
    assert not await containerd.is_unpacked(ref)


async def test_containerd_pulls_from_the_mini_registry(containerd_factory, tmp_path):
    """The load test's in-process upstream speaks enough of the protocol for containerd."""
    image = build_image(LAYERS, seed=13)
    registry = MiniRegistry()
    registry.add("e2e/mini", "v1", image)
    await registry.start()
    try:
        hosts = write_hosts_dir(tmp_path / "hosts", registry.host)
        containerd = await containerd_factory()
        ref = f"{registry.host}/e2e/mini:v1"

        await containerd.pull(ref, hosts)

        assert await containerd.is_unpacked(ref)
        assert registry.blob_gets == Counter(image.blobs().keys())
        assert registry.blob_bytes_sent == image.size + image.config.size
    finally:
        await registry.stop()
