"""``swarmpull benchmarks dataplane``: one node receiving a 1 GiB blob from one source,
links unlimited, loopback; swarmpull beside libtorrent in the same run.

swarmpull: a real supernode (``swarmpull supernode``) is the source: its seed holds the
blob after a first, unmeasured pull read it from the origin once. Each measured run is a
new PeerDaemon process with an empty store that fetches the blob until it is complete
(every piece verified, the whole digest matched). libtorrent: one seeding session (seed
mode, the file whole) and, per run, a new leeching session, each in its own process, to
finished and flushed. GB/s is bytes over the receiver's time; CPU seconds per GB are
each process's (all its threads), the sender's over the same window. swarmpull runs
twice, over plain HTTP and over mutual TLS (a throwaway CA), to show what TLS costs a
node's data plane end to end.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.services import free_port, until_ready
from swarmpull.core.identity import Role
from swarmpull.edges.tls import ClusterTls, throwaway_cluster

GiB = 1 << 30
ROLE = [sys.executable, "-m", "loadtest.bench.dataplane_node"]


async def run_dataplane(runs: int = 3, size: int = GiB) -> str:
    root = Path(tempfile.mkdtemp(prefix="swarmpull-dataplane-"))
    children: list[asyncio.subprocess.Process] = []
    try:
        blob = root / "blob"
        digest = await asyncio.to_thread(_write_blob, blob, size)
        swarm = await _swarmpull(root, blob, digest, runs, children, tls=False)
        tls = await _swarmpull(root, blob, digest, runs, children, tls=True)
        torrent = await _libtorrent(root, blob, digest, runs, children)
    finally:
        for child in children:
            if child.returncode is None:
                child.terminate()
            await child.wait()
        shutil.rmtree(root, ignore_errors=True)
    return _table(size, swarm, tls, torrent)


def _write_blob(path: Path, size: int) -> str:
    sha = hashlib.sha256()
    with path.open("wb") as f:
        for _ in range(0, size, 64 << 20):
            chunk = os.urandom(min(64 << 20, size - f.tell()))
            sha.update(chunk)
            f.write(chunk)
    return "sha256:" + sha.hexdigest()


async def _swarmpull(
    root: Path, blob: Path, digest: str, runs: int, children: list[asyncio.subprocess.Process], tls: bool
) -> list[dict[str, Any]]:
    origin_port, supernode_port = free_port(), free_port()
    origin = await _start(children, [*ROLE, "origin", str(blob), str(origin_port)], ready_line=True)
    listen, seed_dir = f"127.0.0.1:{supernode_port}", root / f"seed-tls{int(tls)}"
    argv = [sys.executable, "-m", "swarmpull", "--log-level", "warning", "supernode", "--listen", listen]
    argv += ["--data-dir", str(seed_dir), "--upstream-allow", "127.0.0.1"]
    receiver_tls: list[str] = []
    check: dict[str, Any] = {}
    if tls:
        dirs = throwaway_cluster(
            root / "tls", [("sn", Role.SUPERNODE), ("node", Role.NODE)], now=datetime.now(UTC), days=1
        )
        argv += ["--tls-dir", str(dirs["sn"])]
        receiver_tls = [str(dirs["node"])]
        check = ClusterTls.load(dirs["node"], now=datetime.now(UTC)).to_supernode()
    else:
        argv.append("--insecure-cluster")
    supernode = await _start(children, argv)
    supernode_url = f"{'https' if tls else 'http'}://127.0.0.1:{supernode_port}"
    await until_ready(lambda: _healthy(supernode_url, check), 30, "the supernode did not start", supernode)
    url = f"http://127.0.0.1:{origin_port}/blob"
    results = []
    for run in range(runs + 1):  # the first run reads the origin into the seed: not measured
        before = _process_cpu(supernode.pid)
        directory = root / f"r{run}"
        command = [*ROLE, "receiver", supernode_url, url, digest, str(directory), *receiver_tls]
        result = await _child_json(command)
        result["sender_cpu"] = _process_cpu(supernode.pid) - before
        if not result.pop("ok"):
            raise RuntimeError("the receiver did not verify the blob's digest")
        shutil.rmtree(directory, ignore_errors=True)
        if run:
            results.append(result)
    for process in (supernode, origin):  # each holds the blob: not beside the next mode's
        process.terminate()
        await process.wait()
    shutil.rmtree(seed_dir, ignore_errors=True)
    return results


async def _libtorrent(
    root: Path, blob: Path, digest: str, runs: int, children: list[asyncio.subprocess.Process]
) -> list[dict[str, Any]]:
    from loadtest.bench.torrent import make_torrent

    torrent = root / "blob.torrent"
    torrent.write_bytes(await asyncio.to_thread(make_torrent, blob))
    port = free_port()
    seed = await _start(children, [*ROLE, "lt-seed", str(torrent), str(root), str(port)], ready_line=True)
    results = []
    for run in range(runs):
        directory = root / f"lt{run}"
        directory.mkdir()
        before = _process_cpu(seed.pid)
        result = await _child_json([*ROLE, "lt-leech", str(torrent), str(directory), str(port)])
        result["sender_cpu"] = _process_cpu(seed.pid) - before
        if "sha256:" + result.pop("sha256") != digest:
            raise RuntimeError("libtorrent's copy does not match the blob")
        shutil.rmtree(directory, ignore_errors=True)
        results.append(result)
    return results


async def _start(
    children: list[asyncio.subprocess.Process], argv: list[str], ready_line: bool = False
) -> asyncio.subprocess.Process:
    child = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE if ready_line else asyncio.subprocess.DEVNULL, env=_env()
    )
    children.append(child)
    if ready_line:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 120)
        if line.strip() != b"READY":
            raise RuntimeError(f"{argv[3]} did not start: {line!r}")
    return child


async def _child_json(argv: list[str]) -> dict[str, Any]:
    child = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, env=_env())
    out, _ = await asyncio.wait_for(child.communicate(), 900)
    if child.returncode != 0:
        raise RuntimeError(f"{argv[3]} exited with {child.returncode}")
    return json.loads(out.decode().strip().splitlines()[-1])


def _env() -> dict[str, str]:
    here = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{here}:{path}" if path else here}


async def _healthy(url: str, tls: dict[str, Any]) -> bool:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/healthz", **tls) as resp:
        return resp.status == 200


def _process_cpu(pid: int) -> float:
    """CPU seconds of a running process, all its threads (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _table(
    size: int, swarm: list[dict[str, Any]], tls: list[dict[str, Any]], torrent: list[dict[str, Any]]
) -> str:
    gb = size / 1e9
    lines = [
        f"dataplane: one receiver, one source, {size / GiB:g} GiB, links unlimited, loopback, "
        f"{len(swarm)} runs each ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores)",
        "| | GB/s min / median / max | receiver CPU s/GB min / median / max | sender CPU s/GB median |",
        "|---|---|---|---|",
    ]
    medians = []
    for name, results in (("swarmpull", swarm), ("swarmpull, mTLS", tls), ("libtorrent 2.1", torrent)):
        rates = sorted(size / r["seconds"] / 1e9 for r in results)
        cpus = sorted(r["cpu"] / gb for r in results)
        sender = statistics.median(r["sender_cpu"] / gb for r in results)
        medians.append(statistics.median(rates))
        lines.append(
            f"| {name} | {rates[0]:.2f} / {medians[-1]:.2f} / {rates[-1]:.2f} "
            f"| {cpus[0]:.2f} / {statistics.median(cpus):.2f} / {cpus[-1]:.2f} | {sender:.2f} |"
        )
    plain, over_tls, libtorrent = medians
    lines.append(f"swarmpull / libtorrent (medians): {plain / libtorrent:.2f}x")
    lines.append(f"swarmpull mTLS / plain (medians): {over_tls / plain:.2f}x")
    return "\n".join(lines)
