"""Mutual TLS between real daemons: a supernode and nodes over a throwaway cluster CA.

A pull over mTLS completes; nobody acts in another node's name (register, report,
heartbeat, leave, the control channel, opens, offers, preheat polls: 403 and the victim
keeps its tasks); pieces go only to cluster certificates; a node certificate cannot
serve as a supernode.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import sys
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509

from swarmpull.core.capability import CAPABILITY_HEADER
from swarmpull.core.digest import Digest
from swarmpull.core.identity import SUPERNODE_TLS_NAME, Role, tls_name
from swarmpull.core.protocol import API
from swarmpull.core.tasks import task_id_for
from swarmpull.edges.http import HostPort, start_site
from swarmpull.edges.tls import CertificateAuthority, ClusterTls, throwaway_cluster, write_tls_dir
from tests.kit.peers import PeerProcess
from tests.kit.supernodes import SupernodeProcess

MiB = 1024 * 1024
NOW = datetime.now(UTC)
MEMBERS = [
    ("sn1", Role.SUPERNODE),
    ("operator", Role.SUPERNODE),  # the operators' tool: starts preheats
    ("node-a", Role.NODE),
    ("node-b", Role.NODE),
    ("node-c", Role.NODE),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> dict[str, Path]:
    """TLS directories of the members, and ``foreign``: a node-a certificate from another
    CA (trusting ours too, so that only its own certificate is refused)."""
    root = tmp_path_factory.mktemp("trust")
    dirs = throwaway_cluster(root, MEMBERS, now=NOW)
    foreign = CertificateAuthority.generate(now=NOW)
    ours = x509.load_pem_x509_certificates((dirs["sn1"] / "ca.pem").read_bytes())
    dirs["foreign"] = root / "foreign"
    write_tls_dir(dirs["foreign"], foreign.issue("node-a", Role.NODE, now=NOW), [foreign.certificate, *ours])
    return dirs


def tls(cluster: dict[str, Path], name: str) -> ClusterTls:
    return ClusterTls.load(cluster[name], now=NOW, require_client_cert=False)


def no_certificate(cluster: dict[str, Path]) -> ssl.SSLContext:
    """A client that trusts the cluster CA but presents no certificate."""
    context = ssl.create_default_context(cafile=str(cluster["sn1"] / "ca.pem"))
    context.verify_flags &= ~ssl.VERIFY_X509_STRICT
    return context


async def swarmpull(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "swarmpull", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    return proc.returncode or 0, err.decode()


async def pull(url: str, out: Path, digest: str, *where: str) -> None:
    code, err = await swarmpull("get", url, "-o", str(out), "--digest", digest, *where)
    assert code == 0, err


async def test_a_pull_over_mutual_tls_completes(cluster, upstream, tmp_path):
    data = os.urandom(3 * MiB)
    url, digest = upstream.add("layer", data), str(Digest.of(data))
    supernode = SupernodeProcess(tmp_path / "sn", "--piece-size", "256KiB", tls_dir=cluster["sn1"])
    a = PeerProcess(tmp_path / "a", supernode.url, tls_dir=cluster["node-a"])
    b = PeerProcess(tmp_path / "b", supernode.url, tls_dir=cluster["node-b"])
    try:
        assert supernode.url.startswith("https://") and a.url.startswith("https://")
        for daemon in (supernode, a, b):
            await daemon.start()
        await pull(url, tmp_path / "a.bin", digest, "--peer", a.api_url)
        await pull(url, tmp_path / "b.bin", digest, "--peer", b.api_url)
        await pull(
            url, tmp_path / "c.bin", digest, "--supernode", supernode.url, "--tls-dir", str(cluster["node-c"])
        )
        for name in ("a.bin", "b.bin", "c.bin"):
            assert (tmp_path / name).read_bytes() == data
        assert upstream.bytes_sent == len(data)  # read once, by the supernode: the rest went over mTLS
        swarm = [await b.metric("swarmpull_peer_download_bytes_total", source=s) for s in ("peer", "seed")]
        assert sum(swarm) == len(data)
        assert (a.data_dir / "peer-id").exists() is False  # the certificate names it: no id made up
    finally:
        for daemon in (b, a, supernode):
            await daemon.stop()


async def test_nobody_acts_in_another_nodes_name(cluster, upstream, tmp_path):
    data = os.urandom(2 * MiB)
    url, digest = upstream.add("layer", data), str(Digest.of(data))
    task = task_id_for(url, Digest.parse(digest))
    # The seed sends each piece once: once the victim holds the blob, a newcomer gets it from
    # the victim alone, unless the victim was dropped from the task.
    supernode = SupernodeProcess(
        tmp_path / "sn", "--piece-size", "256KiB", "--seed-copies", "1", tls_dir=cluster["sn1"]
    )
    victim = PeerProcess(tmp_path / "victim", supernode.url, tls_dir=cluster["node-a"])
    newcomer = PeerProcess(tmp_path / "newcomer", supernode.url, tls_dir=cluster["node-c"])
    attacker = tls(cluster, "node-b")
    try:
        await supernode.start()
        await victim.start()
        await pull(url, tmp_path / "victim.bin", digest, "--peer", victim.api_url)
        api = f"{supernode.url}{API}"
        spoofs = [
            ("POST", f"{api}/peers", {"peer_id": "node-a", "address": "https://127.0.0.1:9", "slots": 8}),
            ("POST", f"{api}/peers/node-a/report", {"tasks": [{"task_id": task, "finished": [0]}]}),
            ("POST", f"{api}/peers/node-a/report", {"dropped_tasks": [task]}),  # a heartbeat
            ("DELETE", f"{api}/peers/node-a", None),
            ("POST", f"{api}/tasks", {"peer_id": "node-a", "tasks": [{"url": url, "digest": digest}]}),
            ("POST", f"{api}/peers/node-a/torrents", {"task_id": task}),
            ("POST", f"{api}/peers/node-a/preheat", {}),
            ("POST", f"{api}/preheat", {"image": "registry.example/app:v1"}),  # a node's certificate
        ]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            for method, where, body in spoofs:
                async with session.request(method, where, json=body, **attacker.to_supernode()) as resp:
                    answer = await resp.json()
                    assert resp.status == 403, (method, where, answer)
                    assert answer["error"]["code"] == "FORBIDDEN"
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(f"{api}/peers/node-a/channel", **attacker.to_supernode())
            assert refused.value.status == 403
            # Without a certificate: 401 on the API; health checks answer anyone.
            anonymous = {"ssl": no_certificate(cluster), "server_hostname": SUPERNODE_TLS_NAME}
            async with session.delete(f"{api}/peers/node-a", **anonymous) as resp:
                assert resp.status == 401
                assert (await resp.json())["error"]["code"] == "UNAUTHENTICATED"
            async with session.get(f"{supernode.url}/healthz", **anonymous) as resp:
                assert resp.status == 200

        await newcomer.start()
        await pull(url, tmp_path / "newcomer.bin", digest, "--peer", newcomer.api_url)
        assert (tmp_path / "newcomer.bin").read_bytes() == data
        # All of it from the victim, still a member of the task and holder of every piece.
        assert await newcomer.metric("swarmpull_peer_download_bytes_total", source="peer") == len(data)
    finally:
        for daemon in (newcomer, victim, supernode):
            await daemon.stop()


async def test_pieces_go_only_to_cluster_certificates(cluster, upstream, tmp_path):
    data = os.urandom(1 * MiB)
    url, digest = upstream.add("layer", data), str(Digest.of(data))
    task = task_id_for(url, Digest.parse(digest))
    supernode = SupernodeProcess(tmp_path / "sn", "--piece-size", "256KiB", tls_dir=cluster["sn1"])
    holder = PeerProcess(tmp_path / "holder", supernode.url, tls_dir=cluster["node-a"])
    member, foreign = tls(cluster, "node-b"), tls(cluster, "foreign")
    try:
        await supernode.start()
        await holder.start()
        await pull(url, tmp_path / "holder.bin", digest, "--peer", holder.api_url)
        sources = [(supernode.url, member.to_supernode(), foreign.to_supernode())]
        sources.append((holder.url, member.to_node("node-a"), foreign.to_node("node-a")))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            for base, ours, theirs in sources:
                piece = f"{base}/pieces/{task}/0"
                async with session.get(piece, **ours) as resp:  # a member needs a capability too
                    assert resp.status == 403
                    assert (await resp.json())["error"]["code"] == "CAPABILITY_REQUIRED"
                anonymous = {**ours, "ssl": no_certificate(cluster)}
                async with session.get(piece, **anonymous) as resp:
                    assert resp.status == 401
                    assert (await resp.json())["error"]["code"] == "UNAUTHENTICATED"
                with pytest.raises(aiohttp.ClientError):  # refused in the handshake: no byte
                    async with session.get(piece, **theirs) as resp:
                        await resp.read()
            # A source that is not the one the supernode named: the requester hangs up.
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with session.get(f"{holder.url}/pieces/{task}/0", **member.to_node("node-c")) as resp:
                    await resp.read()
            with pytest.raises(aiohttp.ClientConnectorCertificateError):  # nor is a node the seed
                async with session.get(f"{holder.url}/pieces/{task}/0", **member.to_supernode()) as resp:
                    await resp.read()
    finally:
        for daemon in (holder, supernode):
            await daemon.stop()


async def test_a_node_certificate_cannot_serve_as_a_supernode(cluster, upstream, tmp_path):
    code, err = await swarmpull(
        "supernode",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        str(tmp_path / "sn"),
        "--tls-dir",
        str(cluster["node-b"]),
    )
    assert code == 2
    assert "node certificate; a supernode needs a supernode certificate" in err, err

    # A node's certificate behind a supernode's URL: the node refuses it in the handshake.
    asked = []

    async def anything(request: aiohttp.web.Request) -> aiohttp.web.Response:
        asked.append(request.path)
        return aiohttp.web.json_response({}, status=500)

    app = aiohttp.web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    impostor = tls(cluster, "node-b")
    runner, bound = await start_site(app, HostPort("127.0.0.1", 0), impostor.server)
    data = os.urandom(MiB)
    url = upstream.add("layer", data)
    try:
        code, err = await swarmpull(
            "get", url, "-o", str(tmp_path / "out"), "--supernode", bound.url("https"),
            "--tls-dir", str(cluster["node-c"]),
        )  # fmt: skip
        assert code == 0, err  # from the upstream, as when no supernode answers
        assert "the swarm was bypassed" in err
        assert asked == []  # not one request reached the impostor
    finally:
        await runner.cleanup()


async def test_only_a_supernode_certificate_starts_a_preheat(cluster, tmp_path):
    supernode = SupernodeProcess(tmp_path / "sn", tls_dir=cluster["sn1"])
    nowhere = "127.0.0.1:1/team/app:v1"  # a registry that is not there: the job fails once started
    try:
        await supernode.start()
        preheat = ["preheat", nowhere, "--supernode", supernode.url, "--deadline", "30s"]
        code, err = await swarmpull(*preheat, "--tls-dir", str(cluster["node-b"]))
        assert code == 2 and "a supernode needs a supernode certificate" in err, err  # the API: 403, above
        code, err = await swarmpull(*preheat, "--tls-dir", str(cluster["operator"]))
        assert code == 1 and "failed" in err and "403" not in err, err  # started, then failed upstream
    finally:
        await supernode.stop()


class Accusers:
    """Nodes that only talk to the supernode: they join a task, then report on node-a."""

    def __init__(self, cluster: dict[str, Path], api: str, task: str) -> None:
        self.cluster, self.api, self.task = cluster, api, task
        self.capabilities: dict[str, str] = {}  # what each was given when it opened the task
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    async def call(self, name: str, where: str, body: object) -> dict:
        async with self.session.post(
            f"{self.api}{where}", json=body, **tls(self.cluster, name).to_supernode()
        ) as resp:
            answer = await resp.json()
            assert resp.status == 200, answer
            return answer

    async def join(self, name: str, url: str, digest: str) -> None:
        """Registers and opens the task; returns once node-a is among its parents (the
        source's completion report is in)."""
        await self.call(name, "/peers", {"peer_id": name, "address": None})
        answer = await self.call(name, "/tasks", {"peer_id": name, "tasks": [{"url": url, "digest": digest}]})
        self.capabilities[name] = answer["tasks"][0]["capability"]
        async with asyncio.timeout(10):
            while "node-a" not in await self.parents(name):
                await asyncio.sleep(0.1)

    async def parents(self, name: str, accuse: bool = False) -> list[str]:
        """``name``'s peer parents after a report (accusing node-a of a corrupt piece)."""
        blame = [{"id": "node-a", "bytes": 0, "seconds": 0.0, "failures": 1, "reason": "corrupt"}]
        report = {"task_id": self.task, "have": "", "parents": blame if accuse else []}
        answer = await self.call(name, f"/peers/{name}/report", {"tasks": [report]})
        return [p["id"] for p in answer["tasks"][self.task]["parents"] if not p.get("seed")]


@contextlib.asynccontextmanager
async def accused_source(cluster, upstream, tmp_path: Path, size: int, piece_size: str):
    """A supernode; node-a, which pulled a blob of ``size`` random bytes; node-b and
    node-c, which opened it and were given node-a. Yields (the blob, node-a, accusers)."""
    data = os.urandom(size)
    url, digest = upstream.add("layer", data), str(Digest.of(data))
    task = task_id_for(url, Digest.parse(digest))
    supernode = SupernodeProcess(tmp_path / "sn", "--piece-size", piece_size, tls_dir=cluster["sn1"])
    source = PeerProcess(tmp_path / "source", supernode.url, tls_dir=cluster["node-a"])
    accusers = Accusers(cluster, f"{supernode.url}{API}", task)
    try:
        await supernode.start()
        await source.start()
        await pull(url, tmp_path / "source.bin", digest, "--peer", source.api_url)
        for name in ("node-b", "node-c"):
            await accusers.join(name, url, digest)
        yield data, source, accusers
    finally:
        await accusers.session.close()
        for daemon in (source, supernode):
            await daemon.stop()


@pytest.mark.parametrize("rotten", [False, True])
async def test_accusations_are_checked_by_the_supernode_over_mutual_tls(cluster, upstream, tmp_path, rotten):
    """Two liars' corrupt reports do not quarantine an honest source: the supernode fetches
    a piece from it itself (with its own certificate) and finds it right. A source whose
    disk rotted is quarantined on one report and that check."""
    async with accused_source(cluster, upstream, tmp_path, 2 * MiB, "256KiB") as (data, _, accusers):
        if rotten:
            with open(tmp_path / "source" / "blobs" / f"{accusers.task}.data", "r+b") as f:
                for offset in range(1000, len(data), 256 * 1024):
                    f.seek(offset)
                    f.write(b"\x00\xff")
            await accusers.parents("node-b", accuse=True)  # one witness
            async with asyncio.timeout(10):  # and the supernode's check
                while "node-a" in await accusers.parents("node-c"):
                    await asyncio.sleep(0.2)
        else:
            await accusers.parents("node-b", accuse=True)
            await asyncio.sleep(1.0)  # the check: one piece over loopback
            await accusers.parents("node-c", accuse=True)
            await asyncio.sleep(1.0)
            assert "node-a" in await accusers.parents("node-b")  # not quarantined
            assert "node-a" in await accusers.parents("node-c")


def hold(
    cluster: dict[str, Path], name: str, port: int, task: str, piece: int, capability: str
) -> socket.socket:
    """``name`` asks node-a for a piece over TLS and reads nothing: an upload slot held
    (the pace rule looks from 60 s on)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before the handshake: a small window
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock = tls(cluster, name).client.wrap_socket(sock, server_hostname=tls_name("node-a", Role.NODE))
    sock.sendall(
        f"GET /pieces/{task}/{piece} HTTP/1.1\r\nHost: x\r\n{CAPABILITY_HEADER}: {capability}\r\n"
        "Accept-Encoding: identity\r\n\r\n".encode()
    )
    return sock


async def test_liars_holding_a_sources_upload_slots_do_not_keep_the_check_from_it(
    cluster, upstream, tmp_path
):
    """Each liar holds its share of the source's upload slots (half: 4 MiB pieces asked
    for and never read), then both accuse it. The supernode's check waited in the
    source's line past its deadline, and the witnesses quarantined an honest source
    (attack round 6): a piece server now serves a supernode's check outside its slots."""
    held: list[socket.socket] = []
    async with accused_source(cluster, upstream, tmp_path, 16 * MiB, "4MiB") as (_, source, accusers):
        try:
            for name in ("node-b", "node-c"):
                capability = accusers.capabilities[name]
                for i in range(8):  # its share: half of node-a's 16 slots
                    held.append(hold(cluster, name, source.port, accusers.task, i % 4, capability))
            await asyncio.sleep(1.0)
            await accusers.parents("node-b", accuse=True)
            await accusers.parents("node-c", accuse=True)
            await asyncio.sleep(7.0)  # past the check's 5 s, had it waited in line
            assert "node-a" in await accusers.parents("node-b")  # not quarantined
        finally:
            for sock in held:
                sock.close()
