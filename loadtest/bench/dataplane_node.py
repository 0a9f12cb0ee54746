"""The processes of ``swarmpull benchmarks dataplane``, one role each (run as
``python -m loadtest.bench.dataplane_node ROLE ...``):

- ``origin FILE PORT``: the upstream, serving FILE from memory.
- ``receiver SUPERNODE URL DIGEST DIR [TLS_DIR]``: one PeerDaemon (links unlimited) that
  fetches the blob into its store and prints one JSON line: seconds from ``ensure`` to
  the blob complete and verified, its CPU seconds over that time, and the digest it
  verified. With TLS_DIR (a node certificate) it talks mutual TLS to the supernode.
- ``lt-seed TORRENT DIR PORT`` / ``lt-leech TORRENT DIR SEED_PORT``: libtorrent, one
  session each; the leech prints the same JSON line (to finished and flushed).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import uvloop


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


async def origin(path: str, port: int) -> None:
    from loadtest.origin_server import BlobServer
    from swarmpull.edges.http import HostPort

    server = BlobServer(HostPort("127.0.0.1", port), chunk=1 << 20)
    server.add("blob", Path(path).read_bytes())
    await server.start()
    print("READY", flush=True)
    await asyncio.Event().wait()


async def receiver(supernode: str, url: str, digest: str, directory: str, tls_dir: str | None = None) -> None:
    from datetime import UTC, datetime

    from peer.config import PeerConfig
    from peer.daemon import PeerDaemon
    from swarmpull.core.blobs import BlobRequest
    from swarmpull.core.digest import Digest
    from swarmpull.edges.tls import ClusterTls

    tls = ClusterTls.load(Path(tls_dir), now=datetime.now(UTC)) if tls_dir else None
    config = PeerConfig(
        data_dir=Path(directory),
        supernodes=(supernode,),
        api_listen=None,
        cache_size=None,
        min_free=0.0,
        upload_limit=None,
        download_limit=None,
        scrub_rate=None,
        tls=tls,
    )
    daemon = PeerDaemon(config)
    await daemon.start()
    try:
        started, cpu = time.perf_counter(), cpu_seconds()
        blob = await daemon.ensure(BlobRequest(url, Digest.parse(digest))).wait_complete()
        seconds, used = time.perf_counter() - started, cpu_seconds() - cpu
        result = {"seconds": seconds, "cpu": used, "bytes": blob.meta.size, "ok": blob.meta.digest == digest}
    finally:
        await daemon.stop()
    print(json.dumps(result), flush=True)


def main(argv: list[str]) -> None:
    role, args = argv[0], argv[1:]
    if role == "origin":
        uvloop.run(origin(args[0], int(args[1])))
    elif role == "receiver":
        uvloop.run(receiver(*args))
    elif role == "lt-seed":
        from loadtest.bench.torrent import seed

        seed(args[0], args[1], int(args[2]))
    elif role == "lt-leech":
        from loadtest.bench.torrent import leech

        print(json.dumps(leech(args[0], args[1], int(args[2]))), flush=True)
    else:
        raise SystemExit(f"unknown role {role}")


if __name__ == "__main__":
    main(sys.argv[1:])
