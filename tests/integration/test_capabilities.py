"""A private blob goes only to nodes with pull rights of their own (issue 16, attack 2).

Real daemons over a throwaway cluster CA on loopback: node A pulls a private blob with
its credentials; node B, a cluster member without them, gets 403 and no byte from A's
piece server, from the seed's and from its own local API (whatever URL it names), and
the blob once it brings credentials of its own. A public blob needs none.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web

from loadtest.origin_server import Fault
from supernode.capabilities import PROOF_SPAN
from swarmpull.core.capability import CAPABILITY_HEADER, CapabilityError, decode, verify
from swarmpull.core.digest import Digest
from swarmpull.core.identity import Role
from swarmpull.core.protocol import API
from swarmpull.core.signing import TaskKeys, keys_from_json
from swarmpull.core.tasks import task_id_for
from swarmpull.edges.tls import ClusterTls, throwaway_cluster
from tests.kit.peers import PeerProcess
from tests.kit.supernodes import SupernodeProcess

MiB = 1024 * 1024
NOW = datetime.now(UTC)
TOKEN = "s3cret-pull-token"
MEMBERS = [("sn1", Role.SUPERNODE), ("node-a", Role.NODE), ("node-b", Role.NODE)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> dict[str, Path]:
    return throwaway_cluster(tmp_path_factory.mktemp("caps"), MEMBERS, now=NOW)


async def fetch(session: aiohttp.ClientSession, api: str, url: str, digest: str, **headers: str):
    """``POST /api/v1/fetch`` on a node's local API: (status, body bytes)."""
    body = {"url": url, "digest": digest, "headers": headers}
    async with session.post(f"{api}{API}/fetch", json=body) as resp:
        return resp.status, await resp.read()


@contextlib.asynccontextmanager
async def three_daemons(cluster, tmp_path, *supernode_args: str):  # type: ignore[no-untyped-def]
    """The supernode sn1 and the nodes A (node-a) and B (node-b), child processes over
    mutual TLS, started; stopped when the block ends."""
    supernode = SupernodeProcess(
        tmp_path / "sn", "--piece-size", "256KiB", *supernode_args, tls_dir=cluster["sn1"]
    )
    a = PeerProcess(tmp_path / "a", supernode.url, tls_dir=cluster["node-a"])
    b = PeerProcess(tmp_path / "b", supernode.url, tls_dir=cluster["node-b"])
    try:
        for daemon in (supernode, a, b):
            await daemon.start()
        yield supernode, a, b
    finally:
        for daemon in (b, a, supernode):
            await daemon.stop()


async def test_a_private_blob_goes_only_to_nodes_with_pull_rights(cluster, upstream, tmp_path):
    data = os.urandom(2 * MiB)
    url, digest = upstream.add("private/layer", data), str(Digest.of(data))
    upstream.faults["/private/layer"] = Fault(token=TOKEN)
    task = task_id_for(url, Digest.parse(digest))
    liar = Liar()
    liar_url = await liar.start()
    liar_host = urlsplit(liar_url).netloc  # also a registry of the attacker's
    b_tls = ClusterTls.load(cluster["node-b"], now=NOW, require_client_cert=False)
    try:
        async with three_daemons(cluster, tmp_path, "--insecure-registry", liar_host) as (supernode, a, b):
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
                status, body = await fetch(session, a.api_url, url, digest, Authorization=f"Bearer {TOKEN}")
                assert status == 200 and body == data

                # B, a cluster member without credentials: no byte from anyone.
                sources = [(a.url, b_tls.to_node("node-a")), (supernode.url, b_tls.to_supernode())]
                for base, ssl_args in sources:
                    for path in (f"/pieces/{task}/0", f"/pieces/{task}/map"):
                        for headers in ({}, {CAPABILITY_HEADER: "AAAA"}):  # none, or garbage
                            async with session.get(base + path, headers=headers, **ssl_args) as resp:
                                answer = await resp.json()
                                assert resp.status == 403, (base, path, answer)
                                assert answer["error"]["code"] == "CAPABILITY_REQUIRED"
                # Nor a torrent of it: the offer needs a capability too.
                offers = f"{supernode.url}{API}/peers/node-b/torrents"
                async with session.post(offers, json={"task_id": task}, **b_tls.to_supernode()) as resp:
                    assert resp.status == 403 and (await resp.json())["error"]["code"] == "PULL_DENIED"
                made_up = upstream.url_of("anything/at/all")  # the digest alone names the task
                for where, headers in (
                    (url, {}),
                    (url, {"Authorization": "Bearer wrong"}),
                    (made_up, {}),
                    (liar_url, {}),  # 200 to anything: a status proves nothing
                    (liar_url + "?ranges", {}),  # 206 with the range asked for, other bytes
                ):
                    status, body = await fetch(session, b.api_url, where, digest, **headers)
                    assert status in (401, 403), (where, status, body[:200])
                    assert data[:4096] not in body and b"PULL_DENIED" in body
                # Nor by having the registry mirror vouch: its word is the word of the registry
                # the opener names, here the attacker's own, which says yes to any digest.
                question = {
                    "registry": liar_host,
                    "repository": "evil/repo",
                    "digest": digest,
                    "authorization": "Bearer x",
                }
                mirror = f"{supernode.url}{API}/registry/blob"
                async with session.post(mirror, json=question, **b_tls.to_supernode()) as resp:
                    assert resp.status == 200, await resp.text()  # the attacker's registry: "yes, it is here"
                own = f"http://{liar_host}/v2/evil/repo/blobs/{digest}"
                status, body = await fetch(session, b.api_url, own, digest, Authorization="Bearer x")
                assert status == 403 and b"PULL_DENIED" in body and data[:4096] not in body
                # Nor by reporting on the task: no capability, no membership, not even who
                # holds it (the answer named A and its address: its libtorrent's host too).
                reports = f"{supernode.url}{API}/peers/node-b/report"
                async with session.post(
                    reports, json={"tasks": [{"task_id": task}]}, **b_tls.to_supernode()
                ) as resp:
                    answer = await resp.json()
                    assert resp.status == 200, answer
                    assert answer["tasks"][task]["error"]["code"] == "UNKNOWN_TASK", answer
                    assert "node-a" not in json.dumps(answer) and "capability" not in answer["tasks"][task]
                assert b.data_dir.joinpath("blobs").exists()
                assert await b.metric("swarmpull_peer_download_bytes_total", source="peer") == 0
                assert await b.metric("swarmpull_peer_download_bytes_total", source="seed") == 0

                # With credentials of its own, B gets it, from the swarm.
                status, body = await fetch(session, b.api_url, url, digest, Authorization=f"Bearer {TOKEN}")
                assert status == 200 and body == data
                async with session.post(offers, json={"task_id": task}, **b_tls.to_supernode()) as resp:
                    assert resp.status == 200  # now it holds a capability
                # Once B holds it, a request of B's without credentials still gets nothing.
                status, body = await fetch(session, b.api_url, url, digest)
                assert status == 403 and data[:4096] not in body
            # Read once, by the seed, and a proof's span of it when B brought its credentials.
            assert upstream.bytes_sent == len(data) + PROOF_SPAN
            assert liar.asked >= 2  # the liar was asked, and its answers did not pass
    finally:
        await liar.stop()


class Liar:
    """An upstream that answers 200 (or 206 with the range asked for) to any request, with
    bytes of its own: what a node without pull rights can name as its URL."""

    def __init__(self) -> None:
        self.asked = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        return f"http://{host}:{port}/any/blob"

    async def _answer(self, request: web.Request) -> web.Response:
        self.asked += 1
        if request.path.rstrip("/") == "/v2":
            return web.Response()  # a registry's base, with no login asked for
        if request.method == "HEAD":  # a registry's yes, whatever the digest
            digest = request.path.rpartition("/")[2]
            return web.Response(headers={"Docker-Content-Digest": digest, "Content-Length": str(2 * MiB)})
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers.get("Range", ""))
        if "ranges" in request.query and match:
            start, end = int(match.group(1)), int(match.group(2))
            headers = {"Content-Range": f"bytes {start}-{end}/{2 * MiB}"}
            return web.Response(status=206, body=os.urandom(end - start + 1), headers=headers)
        return web.Response(body=os.urandom(2 * MiB))

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def test_a_public_blob_needs_no_credentials(cluster, upstream, tmp_path):
    data = os.urandom(1 * MiB)
    url, digest = upstream.add("public/layer", data), str(Digest.of(data))
    async with three_daemons(cluster, tmp_path) as (_, a, b):
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            for node in (a, b, a):
                status, body = await fetch(session, node.api_url, url, digest)
                assert status == 200 and body == data
        # B fetched its pieces from A and the seed, with the capability its open gave it.
        swarm = [await b.metric("swarmpull_peer_download_bytes_total", source=s) for s in ("peer", "seed")]
        assert sum(swarm) == len(data)
        assert upstream.bytes_sent == len(data)
        assert upstream.requests["/public/layer"] == 1  # no HEAD for a public blob


async def test_one_open_of_several_layers_gets_one_signature_naming_each_layer_alone(swarm, upstream):
    """The supernode signs an open's capabilities together; each still lets its holder
    fetch its own task only. The first open waits for the reads, the second finds them."""
    blobs = [os.urandom(9000 + i) for i in range(3)]
    layers = [{"url": upstream.add(f"layer{i}", b), "digest": str(Digest.of(b))} for i, b in enumerate(blobs)]
    missing = {"url": upstream.url_of("none")}
    supernode = await swarm.start_supernode(piece_size=4096)
    base = supernode.url + API
    async with aiohttp.ClientSession() as session:
        for peer in ("p1", "p2"):
            async with session.post(f"{base}/peers", json={"peer_id": peer, "address": None}) as resp:
                assert resp.status == 200
            async with session.post(
                f"{base}/tasks", json={"peer_id": peer, "tasks": [*layers, missing]}
            ) as resp:
                assert resp.status == 200
                *infos, failed = (await resp.json())["tasks"]
            assert failed["error"]["code"] == "UPSTREAM_ERROR"
            keys = TaskKeys()
            for key in keys_from_json(infos[0]["keys"]):
                keys.add(key)
            capabilities = {info["task_id"]: info["capability"] for info in infos}
            assert len({decode(text, task).signature for task, text in capabilities.items()}) == 1
            for task, text in capabilities.items():
                assert verify(text, keys, task, peer, time.time()).peer_id == peer
                for other in set(capabilities) - {task}:
                    with pytest.raises(CapabilityError, match="forged"):
                        verify(text, keys, other, peer, time.time())


class _SizeOnly(Liar):
    """Answers 200 with the blob's size, sends nothing, breaks off: a URL that decides
    nothing about the blob's bytes (found by an attack on loopback, 2026-12-05)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    async def _answer(self, request: web.Request) -> web.StreamResponse:  # type: ignore[override]
        resp = web.StreamResponse(status=200)
        resp.content_length = self.size
        await resp.prepare(request)
        await asyncio.sleep(1.5)
        request.transport.close()
        return resp


async def test_a_first_opener_without_credentials_does_not_make_a_private_blob_public(
    cluster, upstream, tmp_path
):
    # B opens first with a URL of its own that names the size and sends nothing; A's
    # credentialed open comes next, and the read goes on with A's source. The blob is
    # private: it was public only if the attempt that delivered its bytes was anonymous.
    data = os.urandom(2 * 1024 * 1024)
    url, digest = upstream.add("private/layer", data), str(Digest.of(data))
    upstream.faults["/private/layer"] = Fault(token=TOKEN)
    task = task_id_for(url, Digest.parse(digest))
    size_only = _SizeOnly(len(data))
    own_url = await size_only.start()
    b_tls = ClusterTls.load(cluster["node-b"], now=NOW, require_client_cert=False)
    try:
        async with (
            three_daemons(cluster, tmp_path) as (supernode, a, b),
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90)) as session,
        ):
            b_pull = asyncio.create_task(fetch(session, b.api_url, own_url, digest))
            await asyncio.sleep(0.8)  # the task exists, its size known from B's URL
            status, body = await fetch(session, a.api_url, url, digest, Authorization=f"Bearer {TOKEN}")
            assert (status, body == data) == (200, True)
            status, body = await b_pull
            assert status != 200 and body != data
            offers = f"{supernode.url}{API}/peers/node-b/torrents"
            async with session.post(offers, json={"task_id": task}, **b_tls.to_supernode()) as resp:
                assert resp.status == 403
            status, body = await fetch(session, b.api_url, url, digest)  # the real URL, no login
            assert status == 403 and body != data
    finally:
        await size_only.stop()
