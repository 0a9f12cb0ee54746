"""Liars cannot quarantine an honest, reachable source by filling the supernode's line
of checks (attack round 5; filling the source's own upload slots, round 6, is in
``test_trust.py``: checks pass them over mutual TLS only). An accomplice claims holdings
of a dozen small blobs and never answers the supernode: each check of it takes the whole
deadline (5 s). When checks ran four at once in one line for every source, the victim's
check waited past ``check_seconds`` and two liars' corrupt reports quarantined it for an
hour. Now a source has one holdings check at a time, accusations have a line of their
own, and a check that did not happen is no evidence."""

from __future__ import annotations

import asyncio
import os

import aiohttp

from supernode.scheduler import SourceState
from swarmpull.core.bitfield import full, to_text
from swarmpull.core.digest import Digest
from tests.integration.test_accusations import API, accuse, fake_requester, source_holding_it_all

KiB, MiB = 1024, 1024 * 1024
STALLS = 12


async def test_an_accomplice_stalling_the_supernodes_checks_lets_no_liar_quarantine_an_honest_source(
    swarm, upstream
):
    supernode, honest, request, url = await source_holding_it_all(swarm, upstream)
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
