"""What the registry sees when real containerd nodes pull through swarmpull: O(layers)
requests, counted from a real docker-registry's access log; pulls that go on while the
registry is down or rate-limits; and a private image that stays private.

containerd falls back to the registry itself when its mirror fails, so while the
registry is down a pull that succeeds was served by the cluster."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from loadtest.image import Image, build_image, push_image
from loadtest.registry import MiniRegistry
from swarmpull.app.node import NodeDaemon
from tests.kit.nodes import start_node
from tests.kit.services import write_hosts_dir
from tests.kit.supernodes import start_supernode

KiB = 1024
LAYERS = [512 * KiB, 256 * KiB, 128 * KiB]
PIECE_SIZE = 128 * KiB
TAG_TTL = 5.0  # seconds (the default): the outage half outlives the surge's resolution


def hosts_for(node: NodeDaemon, registry_host: str, directory: Path) -> Path:
    """containerd's hosts directory: ``node``'s proxy as the mirror of the registry."""
    return write_hosts_dir(directory, registry_host, mirror=node.proxy.url)


def held(node: NodeDaemon, image: Image) -> list[str]:
    """The image's blobs ``node``'s peer holds complete."""
    digests = []
    for digest in image.blobs():
        blob = node.peer.store.get("sha256-" + digest.split(":")[1])
        if blob is not None and blob.complete:
            digests.append(digest)
    return digests


async def test_five_nodes_cost_the_registry_one_get_per_blob_and_pull_through_its_outage(
    docker_registry, containerd_factory, tmp_path, caplog
):
    image = build_image(LAYERS, seed=41)
    async with aiohttp.ClientSession() as session:
        await push_image(session, docker_registry.url, "team/app", "v1", image)
    pushed = len(docker_registry.accesses())
    host = docker_registry.host
    supernode = await start_supernode(piece_size=PIECE_SIZE, insecure=(host,), tag_ttl=TAG_TTL)
    nodes: list[NodeDaemon] = []
    try:
        for i in range(7):
            nodes.append(await start_node(tmp_path / f"node{i}", (supernode.url,), (host,)))
        containerds = [await containerd_factory() for _ in nodes]
        hosts = [hosts_for(node, host, tmp_path / f"hosts{i}") for i, node in enumerate(nodes)]
        ref = f"{host}/team/app:v1"

        surge = zip(containerds[:5], hosts[:5], strict=True)
        await asyncio.gather(*(containerd.pull(ref, h) for containerd, h in surge))

        for containerd in containerds[:5]:
            assert await containerd.is_unpacked(ref)
        seen = docker_registry.accesses()[pushed:]
        by_kind = Counter(f"{a.method} {a.kind}" for a in seen)
        manifest_gets = Counter(a.reference for a in seen if (a.method, a.kind) == ("GET", "manifests"))
        assert manifest_gets == Counter({image.manifest_digest: 1})  # by digest, once, for all five
        assert docker_registry.blob_gets() == Counter(image.blobs().keys())  # each blob once, for all five
        assert by_kind["HEAD manifests"] <= 2  # the tag: once per TTL, not once per node
        assert by_kind["HEAD blobs"] == 0  # sizes come from the verified manifest
        assert all(a.status == 200 for a in seen)

        # The registry goes down: what the cluster holds still pulls.
        await docker_registry.stop()
        caplog.set_level(logging.WARNING, logger="supernode.registry_mirror")
        pinned = f"{host}/team/app@{image.manifest_digest}"
        await containerds[5].pull(pinned, hosts[5])
        assert await containerds[5].is_unpacked(pinned)

        await asyncio.sleep(TAG_TTL)  # the tag's resolution is past its TTL: served stale
        await containerds[6].pull(ref, hosts[6])
        assert await containerds[6].is_unpacked(ref)
        assert any(
            f"team/app:v1 is {image.manifest_digest}, as resolved" in r.getMessage() for r in caplog.records
        )
        assert docker_registry.accesses()[pushed:] == seen  # nothing reached it
    finally:
        for node in nodes:
            await node.stop()
        await supernode.stop()


def docker_config(directory: Path, host: str, user: str, password: str) -> Path:
    """A docker ``config.json`` holding one login."""
    directory.mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    path = directory / "config.json"
    path.write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return path


async def test_a_node_without_pull_rights_gets_no_byte_of_a_private_image(
    private_registry, containerd_factory, tmp_path
):
    image = build_image(LAYERS, seed=42)
    host = private_registry.host
    alice_login = {"Authorization": private_registry.authorization("alice")}
    async with aiohttp.ClientSession(headers=alice_login) as session:
        await push_image(session, private_registry.url, "team/private", "v1", image)
    login = docker_config(tmp_path / "alice", host, "alice", private_registry.users["alice"])
    supernode = await start_supernode(piece_size=PIECE_SIZE, insecure=(host,))
    nodes: list[NodeDaemon] = []
    try:
        nodes.append(await start_node(tmp_path / "alice-node", (supernode.url,), (host,), credentials=login))
        nodes.append(await start_node(tmp_path / "other-node", (supernode.url,), (host,)))
        alice, other = nodes
        containerds = [await containerd_factory() for _ in nodes]
        ref = f"{host}/team/private:v1"

        await containerds[0].pull(ref, hosts_for(alice, host, tmp_path / "hosts-alice"))
        assert await containerds[0].is_unpacked(ref)
        assert held(alice, image) == list(image.blobs())

        # The cluster now holds every byte; a node the registry does not let in gets none.
        for pinned in (ref, f"{host}/team/private@{image.manifest_digest}"):
            with pytest.raises(RuntimeError, match=r"401|nauthorized"):
                await containerds[1].pull(pinned, hosts_for(other, host, tmp_path / "hosts-other"))
        assert held(other, image) == []
        assert not await containerds[1].is_unpacked(ref)
    finally:
        for node in nodes:
            await node.stop()
        await supernode.stop()


async def test_a_registry_that_rate_limits_manifest_gets_does_not_stop_the_surge(
    containerd_factory, tmp_path
):
    """Docker Hub counts manifest GETs as pulls: here the registry allows one, then 429s."""
    image = build_image(LAYERS, seed=43)
    registry = MiniRegistry()
    registry.add("team/app", "v1", image)
    registry.manifest_get_quota = 1
    await registry.start()
    supernode = await start_supernode(piece_size=PIECE_SIZE, insecure=(registry.host,))
    nodes: list[NodeDaemon] = []
    try:
        for i in range(4):
            nodes.append(await start_node(tmp_path / f"node{i}", (supernode.url,), (registry.host,)))
        containerds = [await containerd_factory() for _ in range(len(nodes) + 1)]
        hosts = [hosts_for(node, registry.host, tmp_path / f"hosts{i}") for i, node in enumerate(nodes)]
        ref = f"{registry.host}/team/app:v1"

        await asyncio.gather(*(c.pull(ref, h) for c, h in zip(containerds, hosts, strict=False)))

        for containerd in containerds[: len(nodes)]:
            assert await containerd.is_unpacked(ref)
        assert registry.requests["GET manifests"] == 1
        # Without the swarm, the next pull is refused: the quota is spent.
        with pytest.raises(RuntimeError, match=r"429|oo many requests|TOOMANYREQUESTS"):
            await containerds[-1].pull(ref, write_hosts_dir(tmp_path / "direct", registry.host))
    finally:
        for node in nodes:
            await node.stop()
        await supernode.stop()
        await registry.stop()
