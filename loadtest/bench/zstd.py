"""``swarmpull benchmarks zstd``: an uncompressed-tar image (Python's own library, tarred)
through a small swarm whose upload limits bind, with and without zstd: wire bytes and
completion time."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

from loadtest.origin_server import BlobServer
from peer.config import PeerConfig
from peer.daemon import PeerDaemon
from supernode.config import SupernodeConfig
from supernode.server import Supernode
from swarmpull.core.blobs import BlobRequest
from swarmpull.core.digest import Digest
from swarmpull.core.units import format_size
from swarmpull.edges.http import HostPort
from swarmpull.edges.metrics import sample

MB = 1000**2
LOOPBACK = HostPort("127.0.0.1", 0)


def uncompressed_tar(limit: int) -> bytes:
    """An uncompressed tar of this Python's standard library, cut at ``limit`` bytes."""
    buffer = io.BytesIO()
    stdlib = Path(os.__file__).parent
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(stdlib.rglob("*.py")):
            if buffer.tell() > limit:
                break
            tar.add(path, arcname=str(path.relative_to(stdlib)))
    return buffer.getvalue()[:limit]


async def _zstd_run(data: bytes, nodes: int, limit: int, compression: bool) -> tuple[float, float]:
    from swarmpull.edges.transport import TransportConfig

    root = Path(tempfile.mkdtemp(prefix="swarmpull-bench-zstd-"))
    upstream = BlobServer()
    supernode = Supernode(
        SupernodeConfig(
            listen=LOOPBACK,
            data_dir=root / "sn",
            piece_size=1 << 20,
            seed_upload_limit=limit,
            upstream_allow=("127.0.0.1",),  # the upstream is on loopback
        )
    )
    peers: list[PeerDaemon] = []
    try:
        await upstream.start()
        url = upstream.add("layer.tar", data)
        await supernode.start()
        for i in range(nodes):
            peer = PeerDaemon(
                PeerConfig(
                    data_dir=root / f"p{i}",
                    supernodes=(supernode.url,),
                    listen=LOOPBACK,
                    api_listen=None,
                    cache_size=None,
                    upload_limit=limit,
                    download_limit=None,
                    transport=TransportConfig(compression=compression),
                )
            )
            await peer.start()
            peers.append(peer)
        request = BlobRequest(url, Digest.of(data))
        start = time.monotonic()
        await asyncio.gather(*(p.ensure(request).wait_complete() for p in peers))
        elapsed = time.monotonic() - start
        wire = sum(
            sample(p.metrics.registry, "swarmpull_peer_download_wire_bytes_total", source=s)
            for p in peers
            for s in ("peer", "seed")
        )
        return wire, elapsed
    finally:
        for peer in peers:
            await peer.stop()
        await supernode.stop()
        await upstream.stop()
        shutil.rmtree(root, ignore_errors=True)


async def run_zstd(size: int = 16 << 20, nodes: int = 8, limit: int = 4 * MB) -> str:
    data = uncompressed_tar(size)
    lines = [
        f"zstd: {format_size(len(data))} uncompressed tar (Python stdlib) to {nodes} peers, "
        f"upload limit {f'{limit / MB:.2f} MB/s'} per peer and seed",
        f"  {'':<14}{'wire bytes':>14}{'x image':>9}{'completion':>12}",
    ]
    for compression in (False, True):
        wire, elapsed = await _zstd_run(data, nodes, limit, compression)
        label = "zstd" if compression else "plain"
        lines.append(
            f"  {label:<14}{format_size(wire):>14}{wire / len(data) / nodes:>8.2f}x{elapsed:>11.2f}s"
        )
    return "\n".join(lines)
