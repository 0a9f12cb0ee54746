"""End to end with the real parts: a real registry holding a multi-layer image, a
supernode, three nodes (peer daemon + registry proxy) each with its own containerd
configured by `swarmpull containerd-config`, and `ctr images pull` on all three at once.

containerd falls back to the registry itself when a mirror fails, so "the registry
served each blob once" also proves every blob came through the swarm."""

from __future__ import annotations

import asyncio
import sys
from collections import Counter

import aiohttp

from loadtest.image import build_image, push_image
from tests.kit.nodes import start_node
from tests.kit.supernodes import start_supernode

MiB = 1024 * 1024


async def containerd_config(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "swarmpull", "containerd-config", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_three_containerds_pull_through_the_swarm(docker_registry, containerd_factory, tmp_path):
    image = build_image([3 * MiB, 2 * MiB, 1 * MiB], seed=21)
    async with aiohttp.ClientSession() as session:
        await push_image(session, docker_registry.url, "team/app", "v1", image)
    supernode = await start_supernode(piece_size=256 * 1024, insecure=(docker_registry.host,))
    nodes = []
    try:
        for i in range(3):
            node = await start_node(tmp_path / f"node{i}", (supernode.url,), (docker_registry.host,))
            nodes.append(node)
        containerds = [await containerd_factory() for _ in nodes]
        hosts_dirs = []
        for i, node in enumerate(nodes):
            certs = tmp_path / f"certs{i}"
            printed = await containerd_config(
                "--mirror", node.proxy.url, "--registry", f"http://{docker_registry.host}",
                "--config-path", str(certs), "--containerd-config", str(tmp_path / "no-config.toml"),
            )  # fmt: skip
            assert f'config_path = "{certs}"' in printed  # the hint for containerd's config.toml
            hosts_dirs.append(certs)
        ref = f"{docker_registry.host}/team/app:v1"

        await asyncio.gather(*(c.pull(ref, h) for c, h in zip(containerds, hosts_dirs, strict=True)))

        for containerd in containerds:
            assert await containerd.is_unpacked(ref)
        assert docker_registry.blob_gets() == Counter(image.blobs().keys())  # each blob read once
        for node in nodes:  # and every node holds every layer, verified
            for digest in image.blobs():
                blob = node.peer.store.get("sha256-" + digest.split(":")[1])
                assert blob is not None and blob.complete
    finally:
        for node in nodes:
            await node.stop()
        await supernode.stop()
