"""Bounds under hostile load, on real processes: floods of idle and slow-header sockets,
upstreams that claim absurd sizes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from loadtest.origin_server import BlobServer, Fault
from supernode.capabilities import PROOFS_PER_PEER
from supernode.errors import error_of
from supernode.new_tasks import BURST
from swarmpull.core.blobs import BlobRequest
from swarmpull.core.digest import Digest
from swarmpull.core.protocol import OpenTask
from swarmpull.edges.http import HostPort, start_site
from swarmpull.edges.store import store as store_module
from tests.kit.floods import FloodProcess
from tests.kit.peers import PeerProcess
from tests.kit.processes import insecure_cluster
from tests.kit.supernodes import SupernodeProcess

KiB, MiB = 1024, 1024 * 1024
SMALL_MACHINE = 1024  # open files, soft and hard: what many hosts give a service


async def swarmpull_get(url: str, out, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "swarmpull", *insecure_cluster(["get", url, "-o", str(out), *args]),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    return proc.returncode, err.decode()


async def test_floods_of_idle_and_slow_sockets_do_not_stop_a_pull(tmp_path, upstream):
    data = os.urandom(4 * MiB)
    url = upstream.add("layer", data)
    digest = str(Digest.of(data))
    supernode = SupernodeProcess(
        tmp_path / "supernode", "--piece-size", "256KiB", "--seed-copies", "1", fd_limit=SMALL_MACHINE
    )  # the seed sends each piece once (to the holder): the newcomer must get it from the holder
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


class Claimer:
    """An upstream that declares 16 TiB, sends 4 MiB of them and breaks off."""

    CLAIM = 16 << 40

    def __init__(self) -> None:
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{path:.*}", self._answer)
        self._runner, bound = await start_site(app, HostPort("127.0.0.1", 0))
        self.url = bound.url()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Accept-Ranges": "bytes"})
        resp.content_length = self.CLAIM
        await resp.prepare(request)
        for _ in range(64):
            await resp.write(os.urandom(64 * KiB))
            await asyncio.sleep(0.05)
        request.transport.close()  # and then it breaks off
        return resp


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * KiB
    raise LookupError("no VmRSS")


async def test_an_upstream_claiming_16_tib_is_refused_for_its_size_or_for_the_disk(tmp_path):
    claimer = Claimer()
    await claimer.start()
    default = SupernodeProcess(tmp_path / "default")
    raised = SupernodeProcess(tmp_path / "raised", "--max-blob-size", "32TiB")
    try:
        await default.start()
        await raised.start()
        code, err = await swarmpull_get(f"{claimer.url}/huge", tmp_path / "a", "--supernode", default.url)
        assert code == 1 and "over the limit" in err, err

        before = rss(raised.process.pid)
        code, err = await swarmpull_get(f"{claimer.url}/huge", tmp_path / "b", "--supernode", raised.url)
        assert code == 1, err  # the one-shot peer's own fallback keeps the default limit
        assert "disk full: 17592186044416 bytes would leave less than" in raised.log  # refused cleanly
        assert rss(raised.process.pid) - before < 64 * MiB  # not a structure per claimed piece
        assert not list(tmp_path.glob("[ab]*"))  # no partial output
        async with aiohttp.ClientSession() as session, session.get(f"{raised.url}/healthz") as resp:
            assert resp.status == 200
    finally:
        for daemon in (default, raised):
            await daemon.stop()
        await claimer.stop()


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs: a disk that fills up for real."""
    where = tmp_path / "small"
    where.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where)], check=True,
                       capture_output=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN): {exc}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def free(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


async def test_a_full_disk_fails_a_blob_cleanly_and_free_space_is_kept_by_evicting(
    swarm, upstream, small_disk, tmp_path
):
    big, one, two = os.urandom(24 * MiB), os.urandom(10 * MiB), os.urandom(10 * MiB)
    urls = {name: upstream.add(name, data) for name, data in (("big", big), ("one", one), ("two", two))}
    supernode = await swarm.start_supernode()
    daemon = PeerProcess(small_disk / "node", supernode.url)  # --min-free: 5 % of 16 MiB
    await daemon.start()
    try:
        empty = free(small_disk)
        code, err = await swarmpull_get(urls["big"], tmp_path / "big", "--peer", daemon.api_url)
        assert code == 1 and "disk full" in err and len(err.splitlines()) == 1, err
        assert free(small_disk) >= empty - MiB  # nothing of it left on the disk
        assert not (tmp_path / "big").exists()

        code, err = await swarmpull_get(urls["one"], tmp_path / "one", "--peer", daemon.api_url)
        assert code == 0, err
        # A blob handed out by path stays pinned for a while (the caller copies it): a
        # restart lets it go, and keeps it.
        await daemon.stop()
        await daemon.start()
        code, err = await swarmpull_get(urls["two"], tmp_path / "two", "--peer", daemon.api_url)
        assert code == 0, err  # two cannot fit beside one: one made room
        assert (tmp_path / "one").read_bytes() == one and (tmp_path / "two").read_bytes() == two
        assert free(small_disk) >= 16 * MiB * 0.05
        assert len(list((small_disk / "node" / "blobs").glob("*.data"))) == 1  # one was evicted
    finally:
        await daemon.stop()


async def test_a_peer_creates_new_tasks_within_its_budget_and_opens_existing_ones_freely(swarm, upstream):
    # Each new task is an upstream read and a blob in the seed's store: a node naming
    # fresh URLs by the hundred would have the supernode read them all.
    supernode = await swarm.start_supernode()
    a, b = await swarm.add_peers(2)
    for peer in (a, b):
        await peer.control.ensure_registered()
    opening = supernode.service.opening
    urls = [upstream.add(f"many/{i}", os.urandom(1024)) for i in range(BURST + 6)]
    answers = await opening.open_tasks(a.peer_id, [OpenTask(a.peer_id, u, None) for u in urls[:BURST]])
    assert all(not isinstance(x, Exception) for x in answers), answers
    answers = await opening.open_tasks(a.peer_id, [OpenTask(a.peer_id, u, None) for u in urls[BURST:]])
    refused = [error_of(x) for x in answers if isinstance(x, Exception)]
    assert refused and all(s == 429 and body["error"]["code"] == "TOO_MANY_TASKS" for s, body, _ in refused)
    assert all("Retry-After" in headers for _, _, headers in refused)
    # Tasks that exist cost nothing, for a or anyone; b has a budget of its own.
    (again,) = await opening.open_tasks(a.peer_id, [OpenTask(a.peer_id, urls[0], None)])
    assert not isinstance(again, Exception)
    answers = await opening.open_tasks(b.peer_id, [OpenTask(b.peer_id, u, None) for u in urls[BURST:]])
    assert all(not isinstance(x, Exception) for x in answers), answers


async def test_a_store_full_of_new_blobs_never_evicts_a_read_under_way(swarm, monkeypatch):
    # The seed's store holds a bounded number of blobs; a node opening new ones must not
    # push out the blob the seed is reading for everyone else: the new ones are refused.
    monkeypatch.setattr(store_module, "blobs_for", lambda fd_limit: 4)
    slow = BlobServer(rate=256 * 1024)  # the honest read takes a few seconds
    await slow.start()
    fast = BlobServer()
    await fast.start()
    try:
        supernode = await swarm.start_supernode(piece_size=64 * 1024)
        honest, greedy = await swarm.add_peers(2)
        for peer in (honest, greedy):
            await peer.control.ensure_registered()
        data = os.urandom(1024 * 1024)
        request = BlobRequest(slow.add("big", data), Digest.of(data))
        download = honest.ensure(request)
        opening = supernode.service.opening
        while supernode.service.seeding.owned(request.task_id) is None:
            await asyncio.sleep(0.05)
        urls = [fast.add(f"tiny/{i}", os.urandom(100)) for i in range(8)]
        await opening.open_tasks(greedy.peer_id, [OpenTask(greedy.peer_id, u, None) for u in urls])
        blob = await download.wait_complete()
        assert hashlib.sha256(blob.read(0, len(data))).digest() == hashlib.sha256(data).digest()
        assert slow.reads["/big"] == 1  # read once, never evicted and read again
        assert len(supernode.store.blobs()) <= 4
    finally:
        await slow.stop()
        await fast.stop()


async def test_an_openers_proofs_of_pull_rights_hold_two_upstream_connections_at_most(swarm, upstream):
    # Each proof is a request to a URL the opener chose, on the seed's upstream pool: a
    # node naming a server that never answers, many times over, must not take that pool.
    data = os.urandom(256 * 1024)
    url, digest = upstream.add("private/layer", data), Digest.of(data)
    upstream.faults["/private/layer"] = Fault(token="t")
    supernode = await swarm.start_supernode(piece_size=64 * 1024)
    owner, greedy = await swarm.add_peers(2)
    await owner.ensure(BlobRequest(url, digest, {"Authorization": "Bearer t"})).wait_complete()
    await greedy.control.ensure_registered()
    held, most = [], 0

    async def tarpit(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal most
        held.append(writer)
        most = max(most, len(held))
        with contextlib.suppress(ConnectionError):
            await reader.read()  # never answers; the proof gives up on its timeout
        held.remove(writer)

    server = await asyncio.start_server(tarpit, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        requests = [OpenTask(greedy.peer_id, f"http://127.0.0.1:{port}/{i}", digest) for i in range(8)]
        opening = asyncio.create_task(supernode.service.opening.open_tasks(greedy.peer_id, requests))
        await asyncio.sleep(2.0)
        assert most == PROOFS_PER_PEER  # the others wait their turn
        opening.cancel()
    finally:
        server.close()


async def test_failed_downloads_are_listed_while_recent_not_for_ever(tmp_path, monkeypatch):
    # Each pull of a blob that cannot be had (a distinct URL, from the local API or the
    # proxy) stayed in the daemon's list for ever (attack round 10).
    from loadtest.services import free_port
    from peer import daemon as daemon_module
    from swarmpull.core.blobs import DownloadFailed
    from swarmpull.core.rates import Priority
    from tests.kit.peers import start_peer

    monkeypatch.setattr(daemon_module, "RECENT_SUMMARIES", 8)
    port = free_port()  # nothing listens there
    daemon = await start_peer(tmp_path, (), direct_jitter=0.0, max_direct=1000)

    async def fail(i: int) -> None:
        request = BlobRequest(f"http://127.0.0.1:{port}/blob/{i}", None, {}, Priority.FOREGROUND)
        with daemon.requested(request) as download, contextlib.suppress(DownloadFailed):
            await asyncio.wait_for(download.wait_ready(), 30)

    try:
        await asyncio.gather(*(fail(i) for i in range(20)))
        await asyncio.sleep(0.1)
        listed = daemon.downloads()
        assert len(listed) == 8 and all(d.state.value == "failed" for d in listed)
    finally:
        await daemon.stop()
