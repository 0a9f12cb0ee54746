"""A swarm over loopback in the test process: an upstream, a supernode, peers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from loadtest.origin_server import BlobServer
from peer.daemon import PeerDaemon
from supernode.server import Supernode
from swarmpull.edges.metrics import sample
from tests.kit.peers import start_peer
from tests.kit.supernodes import start_supernode


class Swarm:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.supernode: Supernode | None = None
        self.peers: list[PeerDaemon] = []

    async def start_supernode(self, **overrides) -> Supernode:
        self.supernode = await start_supernode(**overrides)
        return self.supernode

    async def add_peers(self, count: int, **overrides) -> list[PeerDaemon]:
        default = (self.supernode.url,) if self.supernode else ()
        supernodes = overrides.pop("supernodes", default)
        new = []
        for _ in range(count):
            data_dir = self.root / f"peer{len(self.peers)}"
            peer = await start_peer(data_dir, supernodes, **overrides)
            self.peers.append(peer)
            new.append(peer)
        return new

    async def stop(self) -> None:
        for peer in self.peers:
            await peer.stop()
        if self.supernode is not None:
            await self.supernode.stop()


@pytest.fixture
async def upstream():
    server = BlobServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def swarm(tmp_path):
    swarm = Swarm(tmp_path)
    yield swarm
    await swarm.stop()


def file_sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def downloaded(peers, source: str) -> float:
    return sum(
        sample(p.metrics.registry, "swarmpull_peer_download_bytes_total", source=source) for p in peers
    )


def pieces(peers, outcome: str) -> float:
    return sum(sample(p.metrics.registry, "swarmpull_peer_pieces_total", outcome=outcome) for p in peers)
