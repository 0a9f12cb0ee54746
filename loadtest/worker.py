"""A load-test worker process: many real node daemons on one event loop.

The coordinator sends a ``WorkerSpec``; the worker starts its nodes (peer daemon and
registry proxy on loopback, links shaped to the node bandwidth both ways) and says
``ready``. On ``go`` (a wall-clock start time shared by every worker) each node pulls
the image through its own proxy, exactly as containerd would, and the worker reports
each node as it finishes; then totals; then it stops everything on ``stop``.

Messages on the pipe are tuples: ``("ready", n)``, ``("done", index, seconds, error,
{audit})``, ``("lies", {...}, [nodes])`` (fault runs), ``("totals", {...})``, ``("stopped",)``.

In a fault run (``faults``) some nodes lie through a front (``loadtest.byzantine``), and
each runtime audits every byte against the image and retries a failed pull as kubelet
does (``loadtest.client.pull_until``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path

import aiohttp
import uvloop

from loadtest.byzantine import Fronts, byzantine_config
from loadtest.client import Audit, PullFailed, pull_image, pull_until
from loadtest.faults import NodeFaults
from loadtest.image import build_image
from peer.config import PeerConfig
from registry_proxy.config import ProxyConfig
from swarmpull.app.node import NodeDaemon
from swarmpull.core.events import NO_EVENTS, EventSink
from swarmpull.core.identity import Role
from swarmpull.edges.daemon import quiet_closed_tls, raise_fd_limit
from swarmpull.edges.events import EventLog
from swarmpull.edges.http import HostPort
from swarmpull.edges.metrics import sample
from swarmpull.edges.ratelimit import RateLimiter
from swarmpull.edges.registry import RegistryOptions
from swarmpull.edges.tls import ClusterTls
from swarmpull.edges.torrent import TorrentConfig, Transport

LOOPBACK = HostPort("127.0.0.1", 0)
# Hundreds of libtorrent sessions share a worker process and one address: one disk and
# one hashing thread each, the system's socket buffers, more than one connection per
# address, TCP (uTP is for background traffic; the surge is what a client waits for).
SURGE_TORRENT = TorrentConfig(
    listen=LOOPBACK,
    transport=Transport.TCP,
    shared_address=True,
    disk_threads=1,
    hash_threads=1,
    socket_buffer=0,
    connections=50,
)
REPOSITORY, TAG = "surge/app", "v1"


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    first: int  # index of this worker's first node
    count: int
    root: str  # where the nodes keep their data
    mode: str  # "p2p" (the HTTP swarm), "bittorrent" or "direct"
    registry: str  # host:port of the upstream registry
    supernode: str | None
    node_bandwidth: float | None  # bytes per second, each way
    log_level: str = "error"
    events: str | None = None  # the file this worker's nodes write their events to
    replicas: tuple[str, ...] = ()  # further supernode replicas (each node starts at another)
    faults: NodeFaults | None = None
    alone: bool = False  # a node in a process of its own, to be killed (fault runs)
    tls_root: str | None = None  # the surge's TLS directories (node<i>); None: plain HTTP


def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    """The process entry point."""
    logging.basicConfig(
        level=spec.log_level.upper(), format=f"worker{spec.first}: %(levelname)s %(name)s: %(message)s"
    )
    raise_fd_limit()  # hundreds of nodes hold thousands of sockets and files
    with contextlib.suppress(KeyboardInterrupt):  # the coordinator handles Ctrl-C
        uvloop.run(_run(spec, conn))


async def _recv(conn: Connection) -> tuple:
    return await asyncio.to_thread(conn.recv)


async def _run(spec: WorkerSpec, conn: Connection) -> None:
    quiet_closed_tls(asyncio.get_running_loop())
    nodes: list[NodeDaemon] = []
    fronts = Fronts(spec.faults.mode if spec.faults else "wrong")
    log = EventLog(Path(spec.events)) if spec.events else None  # one writer for all our nodes
    events: EventSink = log or NO_EVENTS
    try:
        if log is not None:
            await log.start()
        if spec.mode != "direct":
            if spec.supernode is None:
                raise ValueError("a p2p worker needs the supernode's URL")
            for i in range(spec.first, spec.first + spec.count):
                front = fronts.reserve() if spec.faults and i in spec.faults.byzantine else None
                node = NodeDaemon(
                    _peer_config(spec, i, front),
                    ProxyConfig(
                        listen=LOOPBACK,
                        registry=RegistryOptions(insecure_registries=frozenset({spec.registry})),
                    ),
                    events=events,
                )
                await node.start()
                nodes.append(node)
                if front is not None:
                    await fronts.start(node)
        conn.send(("ready", spec.count))
        message = await _recv(conn)
        if message[0] != "go":
            return
        start_at = message[1]
        await asyncio.sleep(max(0.0, start_at - time.time()))
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=300)
        connector = aiohttp.TCPConnector(limit=0, force_close=spec.mode == "direct")
        truth = _truth(spec.faults)
        async with aiohttp.ClientSession(
            timeout=timeout, connector=connector, auto_decompress=False
        ) as session:
            pulled = await asyncio.gather(
                *(_pull(spec, session, nodes, i, start_at, conn, truth) for i in range(spec.count))
            )
        if spec.faults:
            conn.send(("lies", dict(fronts.lies()), fronts.liars()))
        # Through the swarm the peers count what came from where; straight from the
        # registry, every byte came from upstream.
        totals = _totals(nodes) if spec.mode != "direct" else {"bytes from upstream": float(sum(pulled))}
        conn.send(("totals", totals))
        while (await _recv(conn))[0] != "stop":
            pass
    finally:
        await fronts.stop()
        for node in nodes:
            with contextlib.suppress(Exception):
                await node.stop()
        if log is not None:
            await log.stop()
        conn.send(("stopped",))


def _peer_config(spec: WorkerSpec, index: int, front_port: int | None = None) -> PeerConfig:
    """Node ``index``'s configuration; ``front_port``: a byzantine node's front, advertised."""
    bandwidth = int(spec.node_bandwidth) if spec.node_bandwidth else None
    supernodes = (spec.supernode, *spec.replicas) if spec.supernode else ()
    turn = index % len(supernodes) if supernodes else 0
    config = PeerConfig(
        data_dir=Path(spec.root) / f"node{index}",
        supernodes=supernodes[turn:] + supernodes[:turn],
        listen=LOOPBACK,
        api_listen=None,
        cache_size=None,
        upload_limit=bandwidth,
        download_limit=bandwidth,
        peer_id=f"node{index}",
        preheat=False,
        blob_transport="bittorrent" if spec.mode == "bittorrent" else "http",
        torrent=SURGE_TORRENT if spec.mode == "bittorrent" else None,
        tls=_node_tls(spec, index),
    )
    return config if front_port is None else byzantine_config(config, front_port)


def _node_tls(spec: WorkerSpec, index: int) -> ClusterTls | None:
    """Node ``index``'s mutual TLS, from the directory the coordinator issued it."""
    if spec.tls_root is None:
        return None
    directory = Path(spec.tls_root) / f"node{index}"
    return ClusterTls.load(directory, now=datetime.now(UTC), role=Role.NODE, require_client_cert=False)


def _truth(faults: NodeFaults | None) -> dict[str, bytes] | None:
    """The image's blobs by digest, for the runtimes' audit (fault runs)."""
    if faults is None:
        return None
    image = build_image(list(faults.layer_sizes), seed=faults.image_seed)
    return {digest: blob.data for digest, blob in image.blobs().items()}


async def _pull(
    spec: WorkerSpec,
    session: aiohttp.ClientSession,
    nodes: list[NodeDaemon],
    local: int,
    start_at: float,
    conn: Connection,
    truth: dict[str, bytes] | None,
) -> int:
    """One node's pull; the blob bytes it received (0 in a fault run, which does not count them)."""
    index = spec.first + local
    error = None
    received = 0
    audit = Audit(truth) if truth is not None else None
    failures = 0
    try:
        if spec.mode != "direct":
            proxy = nodes[local].proxy
            if proxy is None:
                raise RuntimeError("a surge node runs without its registry proxy")
            if spec.faults is not None:
                deadline = start_at + spec.faults.timeout
                failures = await pull_until(
                    session, proxy.url, REPOSITORY, TAG, deadline, ns=spec.registry, audit=audit
                )
            else:
                received = (await pull_image(session, proxy.url, REPOSITORY, TAG, ns=spec.registry)).bytes
        else:
            limiter = RateLimiter(spec.node_bandwidth)  # the node's own download link
            pulled = await pull_image(session, f"http://{spec.registry}", REPOSITORY, TAG, limiter=limiter)
            received = pulled.bytes
    except PullFailed as exc:
        error = str(exc)
    seen = {"failed_pulls": failures}
    if audit is not None:
        seen.update(wrong_bytes=audit.wrong_bytes, refused_blobs=audit.refused_blobs)
    conn.send(("done", index, time.time() - start_at, error, seen))
    return received


def _totals(nodes: list[NodeDaemon]) -> dict[str, float]:
    """Bytes the nodes received, by kind of source, and what zstd saved."""
    totals: dict[str, float] = {}
    for node in nodes:
        registry = node.peer.metrics.registry
        for source in ("peer", "seed", "upstream", "bittorrent"):
            key = f"bytes from {source}"
            totals[key] = totals.get(key, 0.0) + sample(
                registry, "swarmpull_peer_download_bytes_total", source=source
            )
    return totals
