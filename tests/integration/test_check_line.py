"""Liars cannot quarantine an honest, reachable source by keeping the supernode's checks
from it: by filling the supernode's line of checks (attack round 5), or the source's
upload slots (round 6). An accomplice claims holdings of a dozen small blobs and never
answers the supernode: each check of it takes the whole deadline (5 s). When checks ran
four at once in one line for every source, the victim's check waited past
``check_seconds`` and two liars' corrupt reports quarantined it for an hour. Now a
source has one holdings check at a time, accusations have a line of their own, and a
check that did not happen is no evidence. Two liars that each hold half of the victim's
upload slots (asking for big pieces and reading nothing) kept the check in the victim's
line past its deadline, and the witnesses decided: now a piece server serves the
supernode's checks outside its slots."""

from __future__ import annotations

import asyncio
import os
import socket

import aiohttp

from supernode.scheduler import SourceState
from swarmpull.core.bitfield import full, to_text
from swarmpull.core.blobs import BlobRequest
from swarmpull.core.capability import CAPABILITY_HEADER
from swarmpull.core.digest import Digest
from tests.integration.test_accusations import API, accuse, fake_requester, holding_all

KiB, MiB = 1024, 1024 * 1024
STALLS = 12


async def test_an_accomplice_stalling_the_supernodes_checks_lets_no_liar_quarantine_an_honest_source(
    swarm, upstream
):
    data = os.urandom(1 * MiB)
    url = upstream.add("layer", data)
    supernode = await swarm.start_supernode(piece_size=64 * KiB)
    (honest,) = await swarm.add_peers(1)
    request = BlobRequest(url, Digest.of(data))
    await honest.ensure(request).wait_complete()
    await holding_all(supernode, request.task_id, honest.peer_id, 16)
    scheduler = supernode.service.scheduler

    held: list[asyncio.StreamWriter] = []

    async def stall(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accept, read nothing, answer nothing

    server = await asyncio.start_server(stall, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    small = [os.urandom(64 * KiB) for _ in range(STALLS)]
    tasks = [{"url": upstream.add(f"small{i}", b), "digest": str(Digest.of(b))} for i, b in enumerate(small)]
    try:
        async with aiohttp.ClientSession() as session:
            for liar in ("liar1", "liar2"):
                assert honest.peer_id in await fake_requester(
                    session, supernode, liar, url, str(request.digest)
                )
            reg = {"peer_id": "staller", "address": f"http://127.0.0.1:{port}"}
            async with session.post(f"{supernode.url}{API}/peers", json=reg) as resp:
                assert resp.status == 200, await resp.text()
            async with session.post(
                f"{supernode.url}{API}/tasks", json={"peer_id": "staller", "tasks": tasks}
            ) as resp:
                assert resp.status == 200, await resp.text()
            await asyncio.sleep(1.0)  # the seed read the small blobs: their pieces can be checked
            claims = [t | {"have": to_text(full(1), 1)} for t in tasks]  # "I hold them" (a restart's open)
            async with session.post(
                f"{supernode.url}{API}/tasks", json={"peer_id": "staller", "tasks": claims}
            ) as resp:
                assert resp.status == 200, await resp.text()
            await asyncio.sleep(0.2)
            assert supernode.service.membership.checks.running == 1  # one of the staller's at a time
            await accuse(session, supernode, "liar1", request.task_id, honest.peer_id)
            await accuse(session, supernode, "liar2", request.task_id, honest.peer_id)
            source = scheduler._peers[honest.peer_id]
            for _ in range(140):  # 14 s: past check_seconds, had the check waited its turn
                if source.cleared_until or source.state is SourceState.QUARANTINED:
                    break
                await asyncio.sleep(0.1)
        assert scheduler.state(honest.peer_id) is SourceState.ACTIVE, (
            "an honest, reachable source was quarantined"
        )
        assert source.cleared_until  # the supernode checked it in time: its accusers lied
    finally:
        for w in held:
            w.close()
        server.close()


async def open_as(session, supernode, peer_id: str, url: str, digest: str) -> tuple[list[str], str]:
    """Register ``peer_id`` and open the blob: its peer parents and its capability."""
    async with session.post(
        f"{supernode.url}{API}/peers", json={"peer_id": peer_id, "address": None}
    ) as resp:
        assert resp.status == 200, await resp.text()
    body = {"peer_id": peer_id, "tasks": [{"url": url, "digest": digest}]}
    async with session.post(f"{supernode.url}{API}/tasks", json=body) as resp:
        assert resp.status == 200, await resp.text()
        (task,) = (await resp.json())["tasks"]
    return [p["id"] for p in task["parents"] if not p.get("seed")], task["capability"]


def hold(port: int, task_id: str, piece: int, capability: str) -> socket.socket:
    """Ask for a piece and read nothing: a slot held (the pace rule looks from 60 s on)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        f"GET /pieces/{task_id}/{piece} HTTP/1.1\r\nHost: x\r\n{CAPABILITY_HEADER}: {capability}\r\n"
        "Accept-Encoding: identity\r\n\r\n".encode()
    )
    return sock


async def test_liars_holding_a_sources_upload_slots_do_not_keep_the_check_from_it(swarm, upstream):
    data = os.urandom(16 * MiB)
    url = upstream.add("layer", data)
    supernode = await swarm.start_supernode(piece_size=4 * MiB)
    (honest,) = await swarm.add_peers(1)
    request = BlobRequest(url, Digest.of(data))
    await honest.ensure(request).wait_complete()
    await holding_all(supernode, request.task_id, honest.peer_id, 4)
    scheduler = supernode.service.scheduler
    port = int(honest.address.rsplit(":", 1)[1])
    held: list[socket.socket] = []
    try:
        async with aiohttp.ClientSession() as session:
            capabilities = {}
            for liar in ("liar1", "liar2"):
                parents, capabilities[liar] = await open_as(
                    session, supernode, liar, url, str(request.digest)
                )
                assert honest.peer_id in parents
            for liar in ("liar1", "liar2"):  # each its share: half the slots
                for i in range(honest.config.upload_slots // 2):
                    held.append(hold(port, request.task_id, i % 4, capabilities[liar]))
            await asyncio.sleep(1.0)
            await accuse(session, supernode, "liar1", request.task_id, honest.peer_id)
            await accuse(session, supernode, "liar2", request.task_id, honest.peer_id)
            source = scheduler._peers[honest.peer_id]
            for _ in range(120):  # 12 s: past the check's 5 s, had it waited in line
                if source.cleared_until or source.state is SourceState.QUARANTINED:
                    break
                await asyncio.sleep(0.1)
        assert source.state is SourceState.ACTIVE, "liars holding its slots had an honest source quarantined"
        assert source.cleared_until  # the check was served: its accusers lied
    finally:
        for sock in held:
            sock.close()
