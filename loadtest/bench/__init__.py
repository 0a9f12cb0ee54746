"""``swarmpull benchmarks``: measured figures for docs/BENCHMARKS.md, one module each.

- ``limits``: upload and download limits over real loopback transfers.
- ``zstd``: wire bytes and completion with and without zstd.
- ``supernode``: the supernode's CPU through a whole surge of synthetic peers over HTTP.
- ``tls``: mutual TLS against plain HTTP: piece throughput, JSON requests, handshakes.
- ``dataplane``: one node receiving 1 GiB from one source, beside libtorrent.
- ``background``: a preheat over uTP and over TCP beside business traffic on a shaped
  link (network namespaces and tc: root only).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from loadtest.bench.background import run_background
from loadtest.bench.dataplane import run_dataplane
from loadtest.bench.limits import run_limits
from loadtest.bench.supernode import run_supernode
from loadtest.bench.tls import run_tls
from loadtest.bench.zstd import run_zstd

BENCHMARKS: dict[str, Callable[[Any], Awaitable[str]]] = {
    "limits": lambda args: run_limits(args.seconds),
    "zstd": lambda args: run_zstd(),
    "supernode": lambda args: run_supernode(args.peers, args.pieces, args.duration, args.tasks),
    "tls": lambda args: run_tls(),
    "dataplane": lambda args: run_dataplane(args.runs),
    "background": lambda args: run_background(runs=args.runs),
}


async def run_benchmarks(names: list[str], args: Any) -> int:
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}", flush=True)
    for name in names:
        print(await BENCHMARKS[name](args), flush=True)
        print(flush=True)
    return 0
