"""The surge: an upstream, a supernode and N real peer daemons, all pulling one image at once.

Every peer is the production ``PeerDaemon`` on real loopback sockets; many share this
process's event loop. The image is ``layers`` random blobs served by a counting upstream;
a node has finished when every layer is in its store with its digest verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loadtest.report import ModeResult, kumar_ross_bound
from loadtest.upstream import BlobServer
from peer.config import PeerConfig
from peer.daemon import PeerDaemon
from peer.request import BlobRequest
from supernode.config import SupernodeConfig
from supernode.server import Supernode
from swarmpull.digest import Digest
from swarmpull.http import HostPort
from swarmpull.metrics import sample

log = logging.getLogger(__name__)
LOOPBACK = HostPort("127.0.0.1", 0)


@dataclass(frozen=True, slots=True)
class SurgeConfig:
    nodes: int = 50
    """Peer daemons that pull the image at the same moment."""
    image_size: int = 64 << 20
    """Total bytes of the image's layers."""
    layers: int = 4
    """Layers (blobs) the image is cut into."""
    piece_size: int | None = None
    """Fixed piece size; None: the supernode's rule."""
    seed: int = 1
    """Seed of the random image content."""
    mode: str = "p2p"
    """p2p, direct, or both."""
    timeout: float = 600.0
    """Seconds a run may take before the nodes still pulling count as failed."""

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.layers < 1 or self.image_size < self.layers:
            raise ValueError("need at least one node, one layer and one byte per layer")
        if self.mode not in ("p2p", "direct", "both"):
            raise ValueError("mode is p2p, direct or both")


def make_image(config: SurgeConfig) -> list[bytes]:
    rng = random.Random(config.seed)
    base = config.image_size // config.layers
    sizes = [base] * (config.layers - 1) + [config.image_size - base * (config.layers - 1)]
    return [rng.randbytes(size) for size in sizes]


async def run_surge(
    config: SurgeConfig, progress: Callable[[str, int, int], None] | None = None
) -> list[ModeResult]:
    """Run the configured modes one after the other; returns one result per mode."""
    raise_fd_limit()
    layers = make_image(config)
    modes = ["p2p", "direct"] if config.mode == "both" else [config.mode]
    results = []
    for mode in modes:
        root = Path(tempfile.mkdtemp(prefix=f"swarmpull-surge-{mode}-"))
        try:
            results.append(await _run_mode(config, mode, layers, root, progress))
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return results


async def _run_mode(
    config: SurgeConfig,
    mode: str,
    layers: list[bytes],
    root: Path,
    progress: Callable[[str, int, int], None] | None,
) -> ModeResult:
    upstream = BlobServer()
    supernode: Supernode | None = None
    peers: list[PeerDaemon] = []
    try:
        await upstream.start()
        requests = [
            BlobRequest(upstream.add(f"v2/surge/blobs/{i}", data), Digest.of(data))
            for i, data in enumerate(layers)
        ]
        supernodes: tuple[str, ...] = ()
        if mode == "p2p":
            supernode = Supernode(
                SupernodeConfig(listen=LOOPBACK, data_dir=root / "supernode", piece_size=config.piece_size)
            )
            await supernode.start()
            supernodes = (supernode.url,)
        for i in range(config.nodes):
            peer = PeerDaemon(
                PeerConfig(
                    data_dir=root / f"node{i}",
                    supernodes=supernodes,
                    listen=LOOPBACK,
                    api_listen=None,
                    cache_size=None,
                    poll_interval=0.25,
                )
            )
            await peer.start()
            peers.append(peer)
        start = time.monotonic()
        finished: list[float] = []

        async def pull(peer: PeerDaemon) -> None:
            await asyncio.gather(*(peer.ensure(r).wait_complete() for r in requests))
            finished.append(time.monotonic() - start)
            if progress is not None:
                progress(mode, len(finished), config.nodes)

        outcomes = await asyncio.wait_for(
            asyncio.gather(*(pull(p) for p in peers), return_exceptions=True), config.timeout
        )
        wall = time.monotonic() - start
        failed = sum(1 for o in outcomes if isinstance(o, BaseException))
        extra = {}
        if supernode is not None:
            seed = sample(supernode.metrics.registry, "swarmpull_supernode_seed_upload_bytes_total")
            extra["seed upload"] = f"{seed / config.image_size:.2f}x image"
        return ModeResult(
            mode=mode,
            nodes=config.nodes,
            completed=len(finished),
            failed=failed,
            image_size=config.image_size,
            registry_egress=upstream.bytes_sent,
            completion_times=finished,
            bound=kumar_ross_bound(config.image_size, config.nodes, math.inf, math.inf, math.inf),
            wall_time=wall,
            extra=extra,
        )
    finally:
        for peer in peers:
            with contextlib.suppress(Exception):
                await peer.stop()
        if supernode is not None:
            await supernode.stop()
        await upstream.stop()


def raise_fd_limit() -> None:
    """Every peer holds sockets and files: lift the soft descriptor limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
