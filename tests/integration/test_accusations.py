"""Accusations on a real supernode and real peers over loopback: a corrupt report makes
the supernode fetch a piece from the accused source itself. Liars reporting an honest
source corrupt do not get it quarantined (the check finds its bytes right); a source
that really serves corrupt bytes is quarantined after one report and that check."""

from __future__ import annotations

import asyncio
import os

import aiohttp
from aiohttp import web

from supernode.scheduler import SourceState
from swarmpull.core.bitfield import full, to_text
from swarmpull.core.blobs import BlobRequest
from swarmpull.core.digest import Digest
from swarmpull.edges.metrics import sample

KiB, MiB = 1024, 1024 * 1024
API = "/api/v1"


async def holding_all(supernode, task_id, peer_id, count):
    """Until the supernode knows ``peer_id`` holds every piece (its completion report)."""
    scheduler = supernode.service.scheduler
    async with asyncio.timeout(30):
        while scheduler.holdings(task_id).get(peer_id, 0).bit_count() < count:
            await asyncio.sleep(0.05)


async def source_holding_it_all(swarm, upstream):
    """A supernode, and a peer that pulled a 1 MiB blob (16 pieces) and holds it all as
    the supernode knows: (supernode, the peer, the blob's request, its URL)."""
    data = os.urandom(1 * MiB)
    url = upstream.add("layer", data)
    supernode = await swarm.start_supernode(piece_size=64 * KiB)
    (source,) = await swarm.add_peers(1)
    request = BlobRequest(url, Digest.of(data))
    await source.ensure(request).wait_complete()
    await holding_all(supernode, request.task_id, source.peer_id, 16)
    return supernode, source, request, url


async def fake_requester(session, supernode, peer_id, url, digest) -> list[str]:
    """A peer that only talks to the supernode: registers, opens the task, its parents."""
    async with session.post(
        f"{supernode.url}{API}/peers", json={"peer_id": peer_id, "address": None}
    ) as resp:
        assert resp.status == 200, await resp.text()
    body = {"peer_id": peer_id, "tasks": [{"url": url, "digest": digest}]}
    async with session.post(f"{supernode.url}{API}/tasks", json=body) as resp:
        assert resp.status == 200, await resp.text()
        (task,) = (await resp.json())["tasks"]
    return [p["id"] for p in task["parents"] if not p.get("seed")]


async def accuse(session, supernode, reporter, task_id, source) -> None:
    parent = {"id": source, "bytes": 0, "seconds": 0.0, "failures": 1, "reason": "corrupt"}
    body = {"tasks": [{"task_id": task_id, "have": "", "parents": [parent]}]}
    async with session.post(f"{supernode.url}{API}/peers/{reporter}/report", json=body) as resp:
        assert resp.status == 200, await resp.text()


async def checks_done(supernode) -> None:
    checks = supernode.service.membership.checks  # None where nobody checks
    async with asyncio.timeout(15):
        while checks is not None and checks.running:
            await asyncio.sleep(0.05)


async def test_liars_cannot_quarantine_a_source_whose_bytes_are_right(swarm, upstream):
    supernode, honest, request, url = await source_holding_it_all(swarm, upstream)
    scheduler = supernode.service.scheduler
    async with aiohttp.ClientSession() as session:
        for liar in ("liar1", "liar2"):  # two distinct requesters, as the witness rule wants
            assert honest.peer_id in await fake_requester(session, supernode, liar, url, str(request.digest))
        await accuse(session, supernode, "liar1", request.task_id, honest.peer_id)
        await checks_done(supernode)
        await accuse(session, supernode, "liar2", request.task_id, honest.peer_id)
        await checks_done(supernode)
        await asyncio.sleep(0.5)  # a few ticks: nothing decides later either
    assert scheduler.state(honest.peer_id) is SourceState.ACTIVE
    # One check: the second accusation came while the first one's verdict held.
    checks = "swarmpull_supernode_source_checks_total"
    assert sample(supernode.metrics.registry, checks, verdict="right") == 1
    assert honest.peer_id in {p.id for p in scheduler.parents_of(request.task_id, "liar1")}


async def test_a_corrupt_source_is_quarantined_on_one_report_and_the_supernodes_check(swarm, upstream):
    supernode, bad, request, url = await source_holding_it_all(swarm, upstream)
    path = bad.config.data_dir / "blobs" / f"{request.task_id}.data"
    with open(path, "r+b") as f:  # its disk rots under it: every piece
        for offset in range(1000, MiB, 64 * KiB):
            f.seek(offset)
            f.write(b"\x00\xff")
    scheduler = supernode.service.scheduler
    async with aiohttp.ClientSession() as session:
        assert bad.peer_id in await fake_requester(session, supernode, "victim", url, str(request.digest))
        await accuse(session, supernode, "victim", request.task_id, bad.peer_id)  # one witness
        await checks_done(supernode)
    async with asyncio.timeout(5):
        while scheduler.state(bad.peer_id) is not SourceState.QUARANTINED:
            await asyncio.sleep(0.05)
    assert (
        sample(supernode.metrics.registry, "swarmpull_supernode_source_checks_total", verdict="corrupt") == 1
    )


async def test_holdings_a_source_does_not_have_are_not_believed(swarm, upstream):
    """A liar opens the task claiming every piece (as an honest restart would); the
    supernode asks it for one and, answered "not held", no longer counts it a holder."""
    supernode, honest, request, url = await source_holding_it_all(swarm, upstream)

    async def not_held(_: web.Request) -> web.Response:
        return web.Response(status=404)

    nothing = web.Application()  # the liar's piece server: holds nothing
    nothing.router.add_get("/{tail:.*}", not_held)
    runner = web.AppRunner(nothing)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    scheduler = supernode.service.scheduler
    try:
        async with aiohttp.ClientSession() as session:
            reg = {"peer_id": "liar", "address": f"http://127.0.0.1:{port}"}
            async with session.post(f"{supernode.url}{API}/peers", json=reg) as resp:
                assert resp.status == 200, await resp.text()
            task = {"url": url, "digest": str(request.digest), "have": to_text(full(16), 16)}
            async with session.post(
                f"{supernode.url}{API}/tasks", json={"peer_id": "liar", "tasks": [task]}
            ) as resp:
                assert resp.status == 200, await resp.text()
            await checks_done(supernode)
        assert "liar" not in scheduler.holdings(request.task_id)
        assert honest.peer_id in scheduler.holdings(request.task_id)  # an honest holder stays
    finally:
        await runner.cleanup()
