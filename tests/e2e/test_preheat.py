"""Preheat end to end: a real registry holding a two-layer image, a supernode, four
nodes (one of them a child process, killed in the middle of the preheat and restarted),
`swarmpull preheat` followed to the end; then containerd pulls the image through a
node's proxy and no blob byte crosses the network: the node's own store serves them."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import aiohttp

from loadtest.image import build_image, push_image
from swarmpull.edges.http import HostPort
from swarmpull.edges.metrics import sample
from swarmpull.edges.registry import RegistryOptions
from swarmpull.edges.torrent import TorrentConfig
from tests.e2e.test_registry_requests import docker_config
from tests.kit.nodes import start_node
from tests.kit.peers import PeerProcess
from tests.kit.services import write_hosts_dir
from tests.kit.supernodes import start_supernode

MiB = 1024 * 1024
SOURCES = ("peer", "seed", "upstream", "bittorrent")


def received(node) -> dict[str, float]:  # type: ignore[no-untyped-def]
    return {s: sample(node.peer.registry, "swarmpull_peer_download_bytes_total", source=s) for s in SOURCES}


async def until(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def held_on_disk(data_dir: Path) -> set[str]:
    """Digests of the complete blobs in a (stopped) node's store."""
    out = set()
    for meta in (data_dir / "blobs").glob("*.json"):
        record = json.loads(meta.read_text())
        if record.get("complete"):
            out.add("sha256:" + record["task_id"].removeprefix("sha256-"))
    return out


async def test_preheat_reaches_every_node_and_containerd_pulls_from_the_node_alone(
    docker_registry, containerd_factory, tmp_path
):
    image = build_image([2 * MiB, 1 * MiB], seed=17)
    async with aiohttp.ClientSession() as session:
        await push_image(session, docker_registry.url, "team/sale", "v2", image)
    supernode = await start_supernode(
        piece_size=256 * 1024, registry=RegistryOptions(insecure_registries=frozenset({docker_registry.host}))
    )
    nodes, child = [], None
    try:
        for i in range(3):
            torrent = TorrentConfig(listen=HostPort(f"127.0.5.{i + 1}", 0), disk_threads=1, hash_threads=1)
            nodes.append(
                await start_node(
                    tmp_path / f"node{i}", (supernode.url,), (docker_registry.host,), torrent=torrent
                )
            )
        # The fourth node preheats slowly, so that it can be killed half way.
        slow = ("--torrent-listen", "127.0.5.9:0", "--preheat-limit", "400kB/s", "--upload-limit", "none")
        child = PeerProcess(tmp_path / "node3", supernode.url, *slow)
        await child.start()

        async def all_registered() -> bool:
            return len(supernode.service.presence.live()) == 4

        await until(all_registered, 20, "four registered nodes")
        ref = f"{docker_registry.host}/team/sale:v2"
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "swarmpull", "preheat", ref,
            "--supernode", supernode.url, "--deadline", "3m", "--insecure-cluster",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        child_id = (child.data_dir / "peer-id").read_text().strip()

        async def child_half_way() -> bool:
            jobs = supernode.preheats._jobs.values()
            return any(j.status(0)["nodes"].get(child_id, {}).get("bytes", 0) > 0 for j in jobs)

        await until(child_half_way, 60, "the slow node to start its preheat")
        await child.kill()  # mid-preheat: no goodbye, a partial file left behind
        await asyncio.sleep(1.0)
        await child.start()  # same data dir, same id: it picks the preheat up again

        out, err = await asyncio.wait_for(cli.communicate(), 180)
        assert cli.returncode == 0, err.decode()
        assert "complete: 4 nodes" in out.decode()
        assert "blobs seeded" in err.decode()  # progress, a line per change (not a terminal)
        registry_reads = docker_registry.blob_gets()
        assert set(registry_reads) == set(image.blobs()) and set(registry_reads.values()) == {1}  # once each
        for node in nodes:
            for digest in image.blobs():
                blob = node.peer.store.get("sha256-" + digest.split(":")[1])
                assert blob is not None and blob.complete and blob.all_verified
        await child.stop()
        assert held_on_disk(child.data_dir) >= set(image.blobs())

        # containerd pulls through node 0: every blob from its own store, none over the network.
        before = received(nodes[0])
        containerd = await containerd_factory()
        assert nodes[0].proxy is not None
        hosts = write_hosts_dir(tmp_path / "hosts", docker_registry.host, mirror=nodes[0].proxy.url)
        await containerd.pull(ref, hosts)
        assert await containerd.is_unpacked(ref)
        assert received(nodes[0]) == before  # zero bytes from peers, the seed, the registry or torrents
        assert docker_registry.blob_gets() == registry_reads  # the registry sent no blob again
    finally:
        if child is not None:
            await child.stop()
        for node in nodes:
            await node.stop()
        await supernode.stop()


async def test_a_private_image_preheats_only_to_nodes_whose_own_login_pulls_it(private_registry, tmp_path):
    image = build_image([1 * MiB, MiB // 2], seed=23)
    host = private_registry.host
    alice = {"Authorization": private_registry.authorization("alice")}
    async with aiohttp.ClientSession(headers=alice) as session:
        await push_image(session, private_registry.url, "team/private", "v1", image)
    login = docker_config(tmp_path / "alice", host, "alice", private_registry.users["alice"])
    # The supernode reads the image with its own login (the operator's).
    registry = RegistryOptions(insecure_registries=frozenset({host}), credentials=login)
    supernode = await start_supernode(piece_size=256 * 1024, registry=registry)
    nodes = []
    try:
        for i, credentials in enumerate((login, None)):
            torrent = TorrentConfig(listen=HostPort(f"127.0.6.{i + 1}", 0), disk_threads=1, hash_threads=1)
            data_dir = tmp_path / f"node{i}"
            nodes.append(await start_node(data_dir, (supernode.url,), (host,), credentials, torrent=torrent))
        allowed, refused = nodes

        async def both_registered() -> bool:
            return len(supernode.service.presence.live()) == 2

        await until(both_registered, 20, "two registered nodes")
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "swarmpull", "preheat", f"{host}/team/private:v1",
            "--supernode", supernode.url, "--deadline", "20s", "--insecure-cluster",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(cli.communicate(), 60)
        # The node with a login of its own proved its pull rights and holds every blob;
        # the other was never given a torrent and holds none, and the preheat says so.
        assert cli.returncode == 1
        unfinished = err.decode().strip().splitlines()[-1]
        assert refused.peer.peer_id in unfinished and allowed.peer.peer_id not in unfinished
        for digest in image.blobs():
            task_id = "sha256-" + digest.split(":")[1]
            held = allowed.peer.store.get(task_id)
            assert held is not None and held.complete
            assert refused.peer.store.get(task_id) is None
        assert received(refused)["bittorrent"] == 0
        (job,) = supernode.preheats._jobs.values()
        status = job.status(0)["nodes"]
        assert "needs credentials" in status[refused.peer.peer_id]["error"]  # its registry's no
        assert "error" not in status[allowed.peer.peer_id]
    finally:
        for node in nodes:
            await node.stop()
        await supernode.stop()
