"""Bounds under hostile load, on real processes: floods of idle and slow-header sockets,
upstreams that claim absurd sizes."""

from __future__ import annotations

import asyncio
import os
import sys

import aiohttp

from swarmpull.core.digest import Digest
from tests.kit.floods import FloodProcess
from tests.kit.peers import PeerProcess
from tests.kit.supernodes import SupernodeProcess

KiB, MiB = 1024, 1024 * 1024
SMALL_MACHINE = 1024  # open files, soft and hard: what many hosts give a service


async def swarmpull_get(url: str, out, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "swarmpull", "get", url, "-o", str(out), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    return proc.returncode, err.decode()


async def test_floods_of_idle_and_slow_sockets_do_not_stop_a_pull(tmp_path, upstream):
    data = os.urandom(4 * MiB)
    url = upstream.add("layer", data)
    digest = str(Digest.of(data))
    supernode = SupernodeProcess(tmp_path / "supernode", "--piece-size", "256KiB", fd_limit=SMALL_MACHINE)
    holder = PeerProcess(tmp_path / "holder", supernode.url, fd_limit=SMALL_MACHINE)
    newcomer = PeerProcess(tmp_path / "newcomer", supernode.url)
    flood = FloodProcess(
        [(port, 600, mode) for port in (supernode.port, holder.port) for mode in ("idle", "slowloris")]
    )  # the supernode's API and seed; the holder's piece server
    try:
        await supernode.start()
        await holder.start()
        code, err = await swarmpull_get(url, tmp_path / "first", "--digest", digest, "--peer", holder.api_url)
        assert code == 0, err
        await flood.start()

        await newcomer.start()
        code, err = await swarmpull_get(
            url, tmp_path / "copy", "--peer", newcomer.api_url, "--digest", digest
        )
        assert code == 0, err
        assert (tmp_path / "copy").read_bytes() == data
        assert upstream.bytes_sent == len(data)  # the swarm served it: nobody fell back upstream
        from_peers = await newcomer.metric("swarmpull_peer_download_bytes_total", source="peer")
        assert from_peers > 0  # from the holder, through its flooded piece server
        async with aiohttp.ClientSession() as session, session.get(f"{supernode.url}/healthz") as resp:
            assert resp.status == 200  # and still answers anyone who asks
        assert await flood.stop() > 0  # idle ones made room
        assert "open files: at most 1024" in supernode.log
    finally:
        await flood.stop()
        for daemon in (newcomer, holder, supernode):
            await daemon.stop()
