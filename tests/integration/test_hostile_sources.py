"""Sources that lie about what they can serve, on real processes: a peer that holds every
piece but sends at 1 byte/s, or hangs up mid-piece. Pulls through the swarm still finish,
with every byte verified, and the liar stops being handed out."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from loadtest.byzantine import ByzantineFront
from loadtest.image import build_image
from loadtest.registry import MiniRegistry
from loadtest.services import free_port
from swarmpull.core.digest import Digest
from swarmpull.edges.http import HostPort, bind
from swarmpull.edges.metrics import sample
from tests.kit.nodes import start_node
from tests.kit.peers import PeerProcess
from tests.kit.processes import insecure_cluster
from tests.kit.relays import HostileRelay

KiB, MiB = 1024, 1024 * 1024


async def swarmpull_get(url: str, out, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "swarmpull", *insecure_cluster(["get", url, "-o", str(out), *args]),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    return proc.returncode, err.decode()


@dataclass
class Liar:
    """A node that holds the blob (fetched honestly through the swarm), reached by the
    others only through ``relay``; and ``victim``, a node not started yet."""

    url: str
    digest: str
    data: bytes
    relay: HostileRelay
    victim: PeerProcess

    async def pull(self, out: Path) -> None:
        """The victim pulls the blob whole, with every byte checked."""
        await self.victim.start()
        async with asyncio.timeout(180):  # a stalled pull would hang here for ever
            code, err = await swarmpull_get(
                self.url, out, "--peer", self.victim.api_url, "--digest", self.digest
            )
        assert code == 0, err
        assert out.read_bytes() == self.data


@contextlib.asynccontextmanager
async def liar_in_the_swarm(swarm, upstream, tmp_path: Path, size: int) -> AsyncIterator[Liar]:
    data = os.urandom(size)
    url, digest = upstream.add("layer", data), str(Digest.of(data))
    supernode = await swarm.start_supernode(piece_size=64 * KiB, seed_upload_slots=1)
    relay = HostileRelay()  # what the others reach the liar's pieces through
    await relay.start()
    liar = PeerProcess(tmp_path / "liar", supernode.url, "--advertise", relay.url)
    relay.target_port = liar.port
    victim = PeerProcess(tmp_path / "victim", supernode.url)
    try:
        await liar.start()
        code, err = await swarmpull_get(
            url, tmp_path / "liar.bin", "--peer", liar.api_url, "--digest", digest
        )
        assert code == 0, err
        relay.paths.clear()
        yield Liar(url, digest, data, relay, victim)
    finally:
        for daemon in (victim, liar):
            await daemon.stop()
        await relay.stop()


@pytest.mark.parametrize("mode", ["slow", "truncate"])
async def test_a_lying_source_holding_every_piece_does_not_stall_a_pull(swarm, upstream, tmp_path, mode):
    async with liar_in_the_swarm(swarm, upstream, tmp_path, 2 * MiB) as liar:
        liar.relay.mode = mode  # from now on it holds every piece and lies about serving them
        await liar.pull(tmp_path / "copy")
        assert upstream.bytes_sent == len(liar.data)  # the swarm served it, not the registry
        asked = [p for p in liar.relay.paths if p.startswith("/pieces/") and "/map" not in p]
        assert asked  # the liar was handed out, and asked for pieces
        assert await liar.victim.metric("swarmpull_peer_pieces_total", outcome="failed") >= 1  # given up on


async def test_a_source_that_redirects_sends_its_requesters_nowhere(swarm, upstream, tmp_path):
    # A hostile node answers its maps and pieces with redirects: followed, they would take
    # the requester's peer id and capability to any address, out of TLS, a blind GET.
    reached = []
    elsewhere = await asyncio.start_server(lambda r, w: (reached.append(1), w.close()), "127.0.0.1", 0)
    try:
        async with liar_in_the_swarm(swarm, upstream, tmp_path, MiB) as liar:
            liar.relay.mode = "redirect"
            liar.relay.location = f"http://127.0.0.1:{elsewhere.sockets[0].getsockname()[1]}"
            await liar.pull(tmp_path / "copy")
            assert liar.relay.paths  # the victim asked the liar
            assert not reached  # and went nowhere it was sent
    finally:
        elsewhere.close()


@pytest.mark.parametrize("mode", ["slow", "truncate"])
async def test_a_lying_source_does_not_stall_a_pull_through_the_registry_proxy(swarm, tmp_path, mode):
    registry = MiniRegistry()
    await registry.start()
    image = build_image([2 * MiB], seed=11)
    registry.add("app", "v1", image)
    layer = image.layers[0]
    supernode = await swarm.start_supernode(piece_size=64 * KiB, seed_upload_slots=1)
    relay = HostileRelay(free_port())
    await relay.start()
    nodes = []
    try:
        liar = await start_node(
            tmp_path / "liar", (supernode.url,), (registry.host,),
            listen=HostPort("127.0.0.1", relay.target_port), advertise=relay.url,
        )  # fmt: skip
        nodes.append(liar)
        async with aiohttp.ClientSession() as session:
            async with session.get(
                f"{liar.proxy.url}/v2/app/blobs/{layer.digest}?ns={registry.host}"
            ) as resp:
                assert resp.status == 200 and await resp.read() == layer.data
            relay.mode = mode
            relay.paths.clear()

            victim = await start_node(tmp_path / "victim", (supernode.url,), (registry.host,))
            nodes.append(victim)
            async with asyncio.timeout(180):  # containerd would be waiting here
                url = f"{victim.proxy.url}/v2/app/blobs/{layer.digest}?ns={registry.host}"
                async with session.get(url) as resp:
                    assert resp.status == 200 and await resp.read() == layer.data
        assert registry.blob_bytes_sent == len(layer.data)  # the swarm served it, not the registry
        assert [p for p in relay.paths if p.startswith("/pieces/") and "/map" not in p]  # the liar was asked
        assert sample(victim.peer.metrics.registry, "swarmpull_peer_pieces_total", outcome="failed") >= 1
    finally:
        for node in reversed(nodes):
            await node.stop()
        await relay.stop()
        await registry.stop()


@pytest.mark.parametrize("mode", ["refuse", "absent"])
async def test_holders_that_refuse_every_piece_do_not_starve_a_pull(swarm, upstream, tmp_path, mode):
    # Two nodes take the seed's copies of every piece, then answer every request for them
    # "busy", or "not held" while their maps say held (the supernode's checks too): the
    # seed's ration believes peers hold each piece, and without more the victim waits on
    # them for ever.
    data = os.urandom(MiB)
    url, digest = upstream.add("layer", data), str(Digest.of(data))
    supernode = await swarm.start_supernode(piece_size=64 * KiB)
    fronts, daemons = [], []
    try:
        for name in ("a", "b"):
            sock, where = bind(HostPort("127.0.0.1", 0))
            daemon = PeerProcess(tmp_path / name, supernode.url, "--advertise", f"http://{where}")
            front = ByzantineFront(mode, daemon.url, lambda task_id: None)
            await front.start(sock)
            fronts.append(front)
            daemons.append(daemon)
            await daemon.start()
            code, err = await swarmpull_get(
                url, tmp_path / f"{name}.bin", "--peer", daemon.api_url, "--digest", digest
            )
            assert code == 0, err
        victim = PeerProcess(tmp_path / "victim", supernode.url)
        daemons.append(victim)
        await victim.start()
        async with asyncio.timeout(150):
            code, err = await swarmpull_get(
                url, tmp_path / "copy", "--peer", victim.api_url, "--digest", digest
            )
        assert code == 0, err
        assert (tmp_path / "copy").read_bytes() == data
        assert fronts[0].lies["refused piece"] > 0  # the refusers were handed out, and asked
        assert upstream.bytes_sent == len(data)  # the registry sent it once
    finally:
        for daemon in daemons:
            await daemon.stop()
        for front in fronts:
            await front.stop()
