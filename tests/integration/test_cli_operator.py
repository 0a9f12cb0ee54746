"""What an operator sees from ``swarmpull``: the closing line of ``get``, its warning when
the swarm was bypassed, stdout, both digests on a mismatch, Ctrl-C, bind errors that name
their flag, and readiness. Each command runs as a child process, as a user runs it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest

from loadtest.origin_server import BlobServer
from loadtest.services import free_port
from swarmpull.core.digest import Digest
from swarmpull.core.tasks import task_id_for
from tests.kit.peers import PeerProcess
from tests.kit.processes import insecure_cluster

MiB = 1024 * 1024
IN_USE = "address already in use"


async def start(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "swarmpull", *insecure_cluster(args),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def swarmpull(*args: str) -> tuple[int, bytes, str]:
    proc = await start(*args)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out, err.decode()


async def until(check, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def get_json(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.json(content_type=None)


@pytest.fixture
async def daemon(swarm, tmp_path) -> AsyncIterator[PeerProcess]:
    supernode = await swarm.start_supernode()
    node = PeerProcess(tmp_path / "node", supernode.url)
    await node.start()
    yield node
    await node.stop()


async def test_get_says_what_it_got_and_from_where(daemon, upstream, tmp_path):
    data = os.urandom(2 * MiB)
    url = upstream.add("file.bin", data)
    out = tmp_path / "file.bin"
    code, stdout, err = await swarmpull("get", url, "-o", str(out), "--peer", daemon.api_url)
    assert code == 0, err
    assert out.read_bytes() == data and stdout == b""
    (line,) = err.splitlines()
    assert line.startswith(f"swarmpull: got 2.0 MiB into {out} in ")
    assert "0 B from peers, 2.0 MiB from the seed, 0 B from the upstream" in line  # the only other node

    code, stdout, err = await swarmpull("get", url, "-o", "-", "--peer", daemon.api_url, "--quiet")
    assert code == 0, err
    assert stdout == data  # -o - is stdout, not a file named "-"
    assert err == "" and not (tmp_path / "-").exists()


async def test_get_warns_when_the_swarm_was_bypassed(upstream, tmp_path):
    data = os.urandom(MiB)
    url = upstream.add("file.bin", data)
    nobody = f"http://127.0.0.1:{free_port()}"
    out = tmp_path / "file.bin"
    code, _, err = await swarmpull("get", url, "-o", str(out), "--supernode", nobody)
    assert code == 0, err
    assert out.read_bytes() == data
    warning, summary = err.splitlines()
    assert warning.startswith("swarmpull: warning: the swarm was bypassed, read straight from the upstream: ")
    assert "1.0 MiB from the upstream" in summary

    daemon = PeerProcess(tmp_path / "node", nobody)
    await daemon.start()
    try:
        code, _, err = await swarmpull("get", url, "-o", str(out), "--peer", daemon.api_url, "--quiet")
        assert code == 0, err
        assert err.startswith("swarmpull: warning: the swarm was bypassed") and len(err.splitlines()) == 1
    finally:
        await daemon.stop()


async def test_a_digest_mismatch_names_both_digests(daemon, upstream, tmp_path):
    data = os.urandom(MiB)
    url = upstream.add("file.bin", data)
    wrong = Digest.of(b"something else")
    out = tmp_path / "file.bin"
    code, _, err = await swarmpull(
        "get", url, "-o", str(out), "--peer", daemon.api_url, "--digest", str(wrong)
    )
    assert code == 1
    (line,) = err.splitlines()
    assert str(Digest.of(data)) in line and str(wrong) in line, line
    assert not list(tmp_path.glob("*file.bin*"))


@pytest.fixture
async def slow_upstream() -> AsyncIterator[BlobServer]:
    server = BlobServer(rate=1 * MiB)  # a 4 MiB blob takes the supernode four seconds to read
    await server.start()
    yield server
    await server.stop()


@pytest.mark.parametrize("others", [0, 1])
async def test_ctrl_c_cancels_the_daemons_download_unless_another_client_wants_it(
    swarm, slow_upstream, tmp_path, others
):
    supernode = await swarm.start_supernode()
    daemon = PeerProcess(tmp_path / "node", supernode.url)
    await daemon.start()
    data = os.urandom(4 * MiB)
    url, digest = slow_upstream.add("big.bin", data), Digest.of(data)
    task = task_id_for(url, digest)
    get = ["get", url, "--digest", str(digest), "--peer", daemon.api_url]
    try:
        stay = [await start(*get, "-o", str(tmp_path / f"stay{i}.bin")) for i in range(others)]
        leave = await start(*get, "-o", str(tmp_path / "leave.bin"))

        async def under_way() -> bool:
            _, body = await get_json(f"{daemon.api_url}/api/v1/tasks")
            return any(t["task_id"] == task and t["verified"] > 0 for t in body)

        await until(under_way)
        leave.send_signal(signal.SIGINT)
        _, err = await leave.communicate()
        assert leave.returncode == 130 and err.decode().strip() == "swarmpull: interrupted"
        assert not list(tmp_path.glob("*leave.bin*"))  # no partial file

        if others:
            for proc, i in zip(stay, range(others), strict=True):
                _, err = await proc.communicate()
                assert proc.returncode == 0, err.decode()
                assert (tmp_path / f"stay{i}.bin").read_bytes() == data
            _, summary = await get_json(f"{daemon.api_url}/api/v1/tasks/{task}")
            assert summary["state"] == "complete"
        else:

            async def cancelled() -> bool:
                _, summary = await get_json(f"{daemon.api_url}/api/v1/tasks/{task}")
                return summary.get("state") == "failed"

            await until(cancelled)
            _, summary = await get_json(f"{daemon.api_url}/api/v1/tasks/{task}")
            assert "every client that asked for it has left" in summary["error"]
    finally:
        await daemon.stop()


async def test_an_address_in_use_names_its_flag_before_anything_serves(tmp_path):
    flags = ("--listen", "--api-listen", "--proxy-listen")
    taken = [socket.socket() for _ in range(len(flags) + 1)]
    try:
        for sock in taken:
            sock.bind(("127.0.0.1", 0))
            sock.listen()
        ports = [sock.getsockname()[1] for sock in taken]
        runs, wanted = [], []
        for flag, port in zip(flags, ports, strict=False):  # the peer, each of its flags in turn
            addresses = {f: f"127.0.0.1:{free_port()}" for f in flags} | {flag: f"127.0.0.1:{port}"}
            args = [a for pair in addresses.items() for a in pair]
            nobody = f"http://127.0.0.1:{free_port()}"
            data_dir = str(tmp_path / flag)
            runs.append(swarmpull("peer", "--supernode", nobody, "--data-dir", data_dir, *args))
            wanted.append(f"swarmpull: error: {flag}: cannot listen on 127.0.0.1:{port}: {IN_USE}")
        sn_args = ["--listen", f"127.0.0.1:{ports[-1]}", "--data-dir", str(tmp_path / "sn")]
        runs.append(swarmpull("supernode", *sn_args))
        wanted.append(f"swarmpull: error: --listen: cannot listen on 127.0.0.1:{ports[-1]}: {IN_USE}")
        for (code, _, err), line in zip(await asyncio.gather(*runs), wanted, strict=True):
            assert code == 1
            said = [e for e in err.splitlines() if "--insecure-cluster" not in e]  # its warning aside
            assert said == [line]  # the one line: nothing said it was serving
    finally:
        for sock in taken:
            sock.close()


async def test_readiness_means_registered(swarm, tmp_path):
    supernode = await swarm.start_supernode()
    status, body = await get_json(f"{supernode.url}/readyz")
    assert (status, body["status"]) == (200, "ready")
    alone = PeerProcess(tmp_path / "alone", f"http://127.0.0.1:{free_port()}")
    joined = PeerProcess(tmp_path / "joined", supernode.url)
    await alone.start()
    await joined.start()
    try:

        async def ready() -> bool:
            return (await get_json(f"{joined.api_url}/readyz"))[0] == 200

        await until(ready)
        status, body = await get_json(f"{alone.api_url}/readyz")
        assert status == 503 and "not registered" in body["status"]
        assert (await get_json(f"{alone.api_url}/healthz"))[0] == 200  # alive all the same
    finally:
        await alone.stop()
        await joined.stop()
