"""``swarmpull`` as a user runs it: a child process, its exit status, one line of error."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import aiohttp
import pytest

from loadtest.services import free_port
from peer.get import get_file
from swarmpull.core.digest import Digest
from swarmpull.edges.http import HostPort
from swarmpull.edges.metrics import sample
from tests.kit.peers import PeerProcess, start_peer
from tests.kit.processes import insecure_cluster

MiB = 1024 * 1024


async def swarmpull(*args: str, cwd=None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "swarmpull", *insecure_cluster(args),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=cwd,
    )  # fmt: skip
    out, err = await proc.communicate()
    return proc.returncode, out.decode(), err.decode()


async def test_get_as_a_one_shot_peer(swarm, upstream, tmp_path):
    data = os.urandom(3 * MiB)
    url = upstream.add("file.bin", data)
    supernode = await swarm.start_supernode()
    out = tmp_path / "file.bin"
    code, _, err = await swarmpull("get", url, "-o", str(out), "--digest", str(Digest.of(data)),
                                   "--supernode", supernode.url)  # fmt: skip
    assert code == 0, err
    assert out.read_bytes() == data
    assert oct(out.stat().st_mode & 0o777) != oct(0o600)  # an ordinary file, not a private temp
    assert upstream.bytes_sent == len(data)  # through the supernode, once


async def test_get_through_the_local_daemon(swarm, upstream, tmp_path):
    data = os.urandom(2 * MiB)
    url = upstream.add("file.bin", data)
    supernode = await swarm.start_supernode()
    daemon = PeerProcess(tmp_path / "node", supernode.url)
    await daemon.start()
    try:
        out = tmp_path / "copy.bin"
        code, _, err = await swarmpull("get", url, "-o", str(out), "--peer", daemon.api_url)
        assert code == 0, err
        assert out.read_bytes() == data
    finally:
        await daemon.stop()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("wrong-digest", "digest"),
        ("missing", "404"),
        ("no-daemon", "no peer daemon answers"),
        ("bad-digest-arg", "invalid digest"),
    ],
)
async def test_get_failures_are_one_line_and_leave_no_file(swarm, upstream, tmp_path, case, message):
    data = os.urandom(MiB)
    url = upstream.add("file.bin", data)
    supernode = await swarm.start_supernode()
    out = tmp_path / "out.bin"
    args = ["get", url, "-o", str(out), "--supernode", supernode.url]
    if case == "wrong-digest":
        args += ["--digest", str(Digest.of(b"other"))]
    elif case == "missing":
        args[1] = upstream.url_of("nothing-here")
    elif case == "no-daemon":
        args = ["get", url, "-o", str(out), "--peer", f"http://127.0.0.1:{free_port()}"]
    else:
        args += ["--digest", "sha256:1234"]
    code, _, err = await swarmpull(*args)
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], err
    assert lines[0].startswith(("swarmpull: error:", "swarmpull get: error:"))
    assert not list(tmp_path.glob("*out.bin*"))


async def test_daemon_flags_are_checked_before_anything_starts(tmp_path):
    sn = ["--supernode", "http://127.0.0.1:1", "--data-dir", str(tmp_path)]
    code, _, err = await swarmpull("peer", *sn, "--listen", "nowhere")
    assert code == 2 and "HOST:PORT" in err
    code, _, err = await swarmpull("peer", *sn, "--listen", "127.0.0.1:0", "--cache-size", "lots")
    assert code == 2 and "not a size" in err
    code, _, err = await swarmpull("peer", *sn, "--listen", "127.0.0.1:0", "--labels", "zone=a,floor=3")
    assert code == 2 and "unknown labels floor" in err
    code, _, err = await swarmpull("supernode", "--redis", "localhost:6379")
    assert code == 2 and "--redis needs a redis://" in err and len(err.strip().splitlines()) == 1
    code, _, err = await swarmpull("supernode", "--redis", "redis://127.0.0.1:1/0",
                                   "--redis-password-file", str(tmp_path / "missing"))  # fmt: skip
    assert code == 1 and "cannot read" in err
    code, _, err = await swarmpull("supernode", "--min-free", "120%")
    assert code == 2 and "below 100%" in err
    code, _, err = await swarmpull("supernode", "--task-ttl", "nan")
    assert code == 2 and "more than 0 seconds" in err
    code, _, err = await swarmpull("peer", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path),
                                   "--scrub-rate", "fast")  # fmt: skip
    assert code == 2 and "--scrub-rate" in err


async def test_a_second_daemon_on_one_data_dir_is_refused_and_the_first_keeps_serving(
    swarm, upstream, tmp_path
):
    data = os.urandom(MiB)
    url = upstream.add("file.bin", data)
    supernode = await swarm.start_supernode()
    daemon = PeerProcess(tmp_path / "node", supernode.url)
    await daemon.start()
    try:
        second = ["--supernode", supernode.url, "--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"]
        code, _, err = await swarmpull("peer", *second, "--data-dir", str(daemon.data_dir))
        assert code == 1
        assert "Traceback" not in err
        last = err.strip().splitlines()[-1]
        assert last.startswith("swarmpull: error: another swarmpull daemon is using")
        assert str(daemon.data_dir) in last
        assert len(supernode.service.scheduler.peers()) == 1  # the live one, not taken over nor dropped
        out = tmp_path / "copy.bin"
        code, _, err = await swarmpull("get", url, "-o", str(out), "--peer", daemon.api_url)
        assert code == 0, err
        assert out.read_bytes() == data
    finally:
        await daemon.stop()


async def test_supernode_runs_as_a_module_and_stops_cleanly_on_sigterm(tmp_path):
    import aiohttp

    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "swarmpull", "supernode",
        "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path), "--insecure-cluster",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with aiohttp.ClientSession() as session:
        # Up to a minute: a loaded CI machine starts Python slowly; a crash ends it sooner.
        for _ in range(600):
            try:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    assert (await resp.json())["status"] == "ok"
                    break
            except aiohttp.ClientConnectorError:
                if proc.returncode is not None:
                    pytest.fail(f"the supernode exited: {(await proc.communicate())[1].decode()}")
                await asyncio.sleep(0.1)
        else:
            pytest.fail("the supernode did not come up")
    proc.terminate()
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert (tmp_path / "seed").is_dir()


async def test_ca_init_issue_and_show(tmp_path):
    from datetime import UTC, datetime

    from swarmpull.core.identity import Identity, Role
    from swarmpull.edges.tls import load_tls_dir

    ca = tmp_path / "ca"
    code, out, err = await swarmpull("ca", "init", "--out", str(ca))
    assert code == 0, err
    assert "keep it offline" in out.lower()
    assert oct((ca / "ca-key.pem").stat().st_mode & 0o777) == oct(0o600)
    code, out, err = await swarmpull("ca", "issue", "--ca", str(ca), "--name", "peer-1", "--out",
                                     str(tmp_path / "peer-1"), "--host", "127.0.0.1")  # fmt: skip
    assert code == 0, err
    assert "peer-1.node.swarmpull.invalid" in out
    code, _, err = await swarmpull("ca", "issue", "--ca", str(ca), "--name", "sn1", "--role", "supernode",
                                   "--out", str(tmp_path / "sn1"))  # fmt: skip
    assert code == 0, err
    now = datetime.now(UTC)
    peer = load_tls_dir(tmp_path / "peer-1", now=now, role=Role.NODE)
    assert peer.identity == Identity("peer-1", Role.NODE)
    assert load_tls_dir(tmp_path / "sn1", now=now, role=Role.SUPERNODE).identity.is_supernode
    assert oct((tmp_path / "sn1" / "key.pem").stat().st_mode & 0o777) == oct(0o600)
    code, out, err = await swarmpull("ca", "show", str(tmp_path / "sn1"))
    assert code == 0, err
    assert "usable now as supernode sn1" in out
    code, out, _ = await swarmpull("ca", "init", "--help")
    assert code == 0 and "default: 3650" in out and "offline" in out


async def test_ca_rotation_bundles_both_cas(tmp_path):
    from datetime import UTC, datetime

    from swarmpull.edges.tls import load_tls_dir

    for name in ("old", "new"):
        code, _, err = await swarmpull("ca", "init", "--out", str(tmp_path / name))
        assert code == 0, err
    code, _, err = await swarmpull("ca", "issue", "--ca", str(tmp_path / "new"), "--name", "peer-1",
                                   "--trust", str(tmp_path / "old" / "ca.pem"),
                                   "--out", str(tmp_path / "peer-1"))  # fmt: skip
    assert code == 0, err
    files = load_tls_dir(tmp_path / "peer-1", now=datetime.now(UTC))
    assert len(files.trusted) == 2
    code, out, _ = await swarmpull("ca", "show", str(tmp_path / "peer-1"))
    assert "trusting 2 CA(s)" in out


@pytest.fixture(scope="module")
def small_ca(tmp_path_factory):
    """A CA valid 100 days (made in process: only the command under test is a child) and
    node peer-1's TLS directory."""
    from datetime import UTC, datetime

    from swarmpull.edges.tls import CertificateAuthority, write_tls_dir

    root = tmp_path_factory.mktemp("ca")
    now = datetime.now(UTC)
    ca = CertificateAuthority.generate(now=now, days=100)
    ca.save(root / "ca")
    write_tls_dir(root / "node", ca.issue("peer-1", now=now), [ca.certificate])
    return root


@pytest.mark.parametrize(
    ("case", "status", "message"),
    [
        ("overwrite", 1, "already exist (--force replaces them)"),
        ("bad-name", 2, "invalid name 'peer 1'"),
        ("bad-role", 2, "invalid choice: 'admin'"),
        ("reserved-host", 2, "the domain of node identities"),
        ("no-ca", 1, "ca.pem: no such file"),
        ("too-long", 1, "would outlive the CA"),
        ("trust-a-node", 1, "is not a CA certificate"),
    ],
)
async def test_ca_mistakes_are_one_line(small_ca, tmp_path, case, status, message):
    ca, node = str(small_ca / "ca"), str(small_ca / "node")
    args = ["ca", "issue", "--ca", ca, "--name", "peer-2", "--out", str(tmp_path / "node2")]
    if case == "overwrite":
        args = ["ca", "issue", "--ca", ca, "--name", "peer-1", "--out", node]
    elif case == "bad-name":
        args[5] = "peer 1"
    elif case == "bad-role":
        args += ["--role", "admin"]
    elif case == "reserved-host":
        args += ["--host", "peer-9.node.swarmpull.invalid"]
    elif case == "no-ca":
        args[3] = str(tmp_path / "nothing")
    elif case == "too-long":
        args += ["--days", "365"]
    else:
        args += ["--trust", str(small_ca / "node" / "cert.pem")]
    code, _, err = await swarmpull(*args)
    assert code == status
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], err
    assert lines[0].startswith(("swarmpull: error:", "swarmpull ca issue: error:"))
    assert not (tmp_path / "node2").exists()


async def test_containerd_config_hold_undoes_its_files_when_stopped(tmp_path):
    certs = tmp_path / "certs.d"
    (certs / "ghcr.io").mkdir(parents=True)
    (certs / "ghcr.io" / "hosts.toml").write_text('server = "https://ghcr.io"\n')  # the operator's own
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "swarmpull", "containerd-config", "--hold", "--all",
        "--registry", "ghcr.io", "--config-path", str(certs),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        while b"holding" not in await proc.stdout.readline():
            assert proc.returncode is None
    assert "127.0.0.1:65001" in (certs / "ghcr.io" / "hosts.toml").read_text()
    assert (certs / "_default" / "hosts.toml").is_file()
    proc.terminate()
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert (certs / "ghcr.io" / "hosts.toml").read_text() == 'server = "https://ghcr.io"\n'
    assert not (certs / "_default").exists()


async def test_get_through_the_daemon_copies_the_verified_file_or_leaves_none(swarm, upstream, tmp_path):
    """Through the daemon, ``get`` copies the store's verified file (``/api/v1/file``):
    the output is the blob when get exits 0, and there is no file when the whole digest
    is wrong. The summary line gives the CPU per GB here and in the daemon."""
    data = os.urandom(3 * MiB)
    url = upstream.add("file.bin", data)
    supernode = await swarm.start_supernode()
    daemon = PeerProcess(tmp_path / "node", supernode.url)
    await daemon.start()
    try:
        out = tmp_path / "good.bin"
        code, _, err = await swarmpull("get", url, "-o", str(out), "--peer", daemon.api_url,
                                       "--digest", str(Digest.of(data)))  # fmt: skip
        assert code == 0, err
        assert out.read_bytes() == data
        assert "s/GB here" in err and "s/GB in the daemon" in err
        bad = tmp_path / "bad.bin"
        other = upstream.add("other.bin", os.urandom(MiB))
        code, _, err = await swarmpull("get", other, "-o", str(bad), "--peer", daemon.api_url,
                                       "--digest", str(Digest.of(b"not this")))  # fmt: skip
        assert code != 0 and "digest" in err
        assert not list(tmp_path.glob("*bad.bin*"))
    finally:
        await daemon.stop()


async def test_the_local_api_refuses_what_a_web_page_can_send(swarm, upstream, tmp_path):
    supernode = await swarm.start_supernode()
    daemon = PeerProcess(tmp_path / "node", supernode.url)
    await daemon.start()
    body = {"url": upstream.add("x", b"x")}
    try:
        async with aiohttp.ClientSession() as session:
            for kwargs, status in (
                ({"json": body, "headers": {"Origin": "https://evil.example"}}, 403),
                ({"json": body, "headers": {"Host": "rebound.evil.example"}}, 403),
                ({"json": body, "headers": {"Host": "127.0.0.\u00b2"}}, 403),  # isdigit(), not int(): a 500
                ({"data": '{"url": "http://x/"}', "headers": {"Content-Type": "text/plain"}}, 415),
            ):
                async with session.post(f"{daemon.api_url}/api/v1/file", **kwargs) as resp:
                    assert resp.status == status
    finally:
        await daemon.stop()


@pytest.mark.parametrize("timeout, completed", [("2", 0), (None, 4)])
async def test_a_surge_stops_at_its_timeout_and_counts_the_nodes_not_done(tmp_path, timeout, completed):
    """4 nodes x 1 MiB at 100 kB/s need at least 10.5 s: after 2 s none is done (and the
    command says so with its exit status)."""
    report = tmp_path / "report.json"
    extra = ["--timeout", timeout] if timeout else []
    code, _, err = await swarmpull("loadtest", "--simulate", "--nodes", "4", "--image-size", "1MiB",
                                   "--layers", "1", *extra, "--json", str(report))  # fmt: skip
    assert code == (0 if completed == 4 else 1), err
    (result,) = json.loads(report.read_text())["results"]
    assert (result["completed"], result["failed"]) == (completed, 4 - completed)


async def test_a_trace_of_a_surge_on_sockets_is_refused_in_one_line():
    code, out, err = await swarmpull("loadtest", "--nodes", "4", "--trace", "0.5")
    assert code == 1 and not out
    assert err.strip() == "swarmpull: error: --trace applies to simulated surges (--simulate)"


@pytest.mark.parametrize(
    "service, words",
    [
        ("task=0.1ms", "unknown kind 'task': open, report, open_task, report_task"),
        ("open=fast", "KIND=SECONDS"),
    ],
)
async def test_a_supernode_charge_that_is_not_one_is_refused_in_one_line(service, words):
    code, out, err = await swarmpull("loadtest", "--simulate", "--service", service)
    assert code == 2 and not out
    assert words in err.strip().splitlines()[-1]


async def test_get_through_the_daemon_never_copies_bytes_the_disk_changed(swarm, upstream, tmp_path):
    """A blob kept from before a restart is re-hashed before its file is handed out whole:
    bytes the disk changed meanwhile (bit rot, a torn write) are dropped and fetched
    again, where ``get -o`` copied them (the scrubber had not reached them yet)."""
    data = os.urandom(2 * MiB)
    url = upstream.add("kept.bin", data)
    supernode = await swarm.start_supernode()
    node = tmp_path / "node"
    peer = await start_peer(node, (supernode.url,), api_listen=HostPort("127.0.0.1", 0))
    await get_file(url, tmp_path / "first.bin", digest=Digest.of(data), peer_api=peer.api_url)
    path = peer.store.data_path(f"sha256-{Digest.of(data).hex}")
    await peer.stop()
    with open(path, "r+b") as f:
        f.seek(len(data) - 1000)  # the last piece: the scrubber reaches it last
        f.write(b"\x00" * 64)
    peer = await start_peer(node, (supernode.url,), api_listen=HostPort("127.0.0.1", 0), scrub_rate=64 * 1024)
    swarm.peers.append(peer)
    out = tmp_path / "out.bin"
    await get_file(url, out, digest=Digest.of(data), peer_api=peer.api_url)
    assert out.read_bytes() == data
    blobs = "swarmpull_peer_blobs_total"
    assert sample(peer.metrics.registry, blobs, outcome="corrupt") == 1
    assert sample(peer.metrics.registry, blobs, outcome="complete") == 2  # held, then fetched again
