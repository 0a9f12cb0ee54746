"""The dashboard and the events log on a real swarm over loopback: what an operator sees
(and who may see it), what the daemons write, and the report made from it; and the whole
cluster seen from any replica on a real Redis."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from urllib.parse import urlsplit

import aiohttp
import pytest

from loadtest.replay import summarize
from swarmpull.core.blobs import BlobRequest
from swarmpull.core.digest import Digest
from swarmpull.edges.events import EventLog
from tests.kit.peers import start_peer
from tests.kit.supernodes import RedisServer, SupernodeProcess

KiB = 1024
TOKEN = "d" * 40
BEARER = {"Authorization": f"Bearer {TOKEN}"}


async def state(session: aiohttp.ClientSession, url: str, **kwargs) -> dict:
    async with session.get(f"{url}/ui/api/state", **kwargs) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["state"]


async def until(check, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


async def raw_status(url: str, line: bytes, header: bytes) -> int:
    """The status of a request sent as raw bytes (a header no HTTP client would send)."""
    split = urlsplit(url)
    reader, writer = await asyncio.open_connection(split.hostname, split.port)
    writer.write(line + b" HTTP/1.1\r\nHost: x\r\n" + header + b"\r\nConnection: close\r\n\r\n")
    head = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    return int(head.split(b" ", 2)[1])


async def test_an_operator_sees_the_swarm_and_the_events_tell_the_same_story(swarm, upstream, tmp_path):
    data = os.urandom(256 * KiB)
    url = upstream.add("layer", data)
    supernode_events, peer_events = EventLog(tmp_path / "supernode.jsonl"), EventLog(tmp_path / "peers.jsonl")
    await supernode_events.start()
    await peer_events.start()
    try:
        supernode = await swarm.start_supernode(
            ui_token=TOKEN, ui_interval=0.2, piece_size=32 * KiB, events=supernode_events
        )
        peers = await swarm.add_peers(6, events=peer_events, download_limit=512 * KiB)
        downloads = [p.ensure(BlobRequest(upstream.url_of("layer"), Digest.of(data))) for p in peers]
        await asyncio.gather(*(d.wait_complete() for d in downloads))
        task_id = downloads[0].task_id

        # unsafe: keep cookies of an IP address (127.0.0.1), as browsers do
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            async with session.get(f"{supernode.url}/ui/api/state") as resp:
                assert resp.status == 401
                assert (await resp.json())["error"]["code"] == "UNAUTHENTICATED"
            async with session.get(f"{supernode.url}/ui/") as resp:  # the page holds no data
                assert resp.status == 200
                assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]

            async def all_done() -> dict | None:
                view = await state(session, supernode.url, headers=BEARER)
                task = next((t for t in view["tasks"] if t["id"] == task_id), None)
                ok = (
                    task
                    and task["done"] == task["members"] == 6
                    and view["saved"]["received"] == 6 * len(data)
                )
                return view if ok else None

            view = await until(all_done)
            assert view["totals"]["registry"] == len(data)  # the supernode read it once
            assert view["saved"]["bytes"] == 5 * len(data)
            assert view["peers"] == 6

            # A browser logs in once and gets a session cookie, then streams.
            async with session.post(f"{supernode.url}/ui/login", data={"token": "wrong" * 5}) as resp:
                assert resp.status == 401
            many = "&".join(f"f{i}=x" for i in range(10))  # not a login form: no 500
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            async with session.post(f"{supernode.url}/ui/login", data=many, headers=headers) as resp:
                assert resp.status == 401
            deep = {"Content-Type": "application/json"}  # nested past the parser's recursion: no 500
            async with session.post(f"{supernode.url}/ui/login", data="[" * 4000, headers=deep) as resp:
                assert resp.status == 401
            lone = b'{"token": "\\ud800"}'  # JSON, and no text: a 500 before
            async with session.post(f"{supernode.url}/ui/login", data=lone, headers=deep) as resp:
                assert resp.status == 401
            assert (
                await raw_status(supernode.url, b"GET /ui/api/state", b"Authorization: Bearer \xff\xfe")
                == 401
            )
            for origin in ("http://evil.example", "http://["):  # the second no URL at all: a 500 before
                async with session.post(
                    f"{supernode.url}/ui/login", json={"token": TOKEN}, headers={"Origin": origin}
                ) as resp:
                    assert resp.status == 403
            async with session.post(f"{supernode.url}/ui/login", json={"token": TOKEN}) as resp:
                assert resp.status == 204
                cookie = resp.cookies["swarmpull_ui"]
                assert cookie["httponly"] and cookie["samesite"] == "Strict" and TOKEN not in cookie.value
            async with session.get(f"{supernode.url}/ui/api/stream") as resp:
                assert resp.headers["Content-Type"] == "text/event-stream"
                seen: list[str] = []
                nodes = None
                async for line in resp.content:
                    text = line.decode()
                    if text.startswith("event: "):
                        seen.append(text[7:].strip())
                    elif text.startswith("data: ") and seen[-1] == "state":
                        nodes = json.loads(text[6:])["nodes"] or nodes
                    if nodes and seen.count("point") >= 2:
                        break
            assert seen[0] == "history"
            by_id = {n["id"]: n for n in nodes}
            assert set(by_id) == {p.peer_id for p in peers}
            assert all(n["down"] == len(data) and n["tasks_done"] == n["tasks"] == 1 for n in nodes)
            assert all(n["channel"] for n in nodes)  # each peer's control channel is open
            assert sum(n["up"] for n in nodes) == view["totals"]["from_peers"]
            async with session.post(f"{supernode.url}/ui/logout") as resp:
                assert resp.status == 204
            async with session.get(f"{supernode.url}/ui/api/state") as resp:
                assert resp.status == 401
    finally:
        await swarm.stop()
        await supernode_events.stop()
        await peer_events.stop()

    result = summarize([tmp_path / "supernode.jsonl", tmp_path / "peers.jsonl"])
    assert (result.nodes, result.completed, result.failed) == (6, 6, 0)
    assert result.registry_egress == len(data) and result.image_size == len(data)
    assert result.sources["peer"] + result.sources["seed"] == 6 * len(data)
    assert result.extra["malformed lines"] == 0 and result.extra["events dropped by writers"] == 0
    kinds = {json.loads(line)["event"] for line in (tmp_path / "supernode.jsonl").read_text().splitlines()}
    assert {
        "peer_joined",
        "task_opened",
        "parents_assigned",
        "upstream_read",
        "task_finished",
        "peer_left",
    } <= kinds
    assert url.partition("?")[0] in (tmp_path / "supernode.jsonl").read_text()


async def test_without_a_token_the_dashboard_is_off(swarm):
    supernode = await swarm.start_supernode()
    async with aiohttp.ClientSession() as session:
        for path in ("/ui/", "/ui/api/state", "/ui/api/stream"):
            async with session.get(f"{supernode.url}{path}", headers=BEARER) as resp:
                assert resp.status == 404
                assert (await resp.json())["error"]["code"] == "UI_DISABLED"


@pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server (scripts/test installs it)")
async def test_any_replica_shows_the_whole_cluster(tmp_path, upstream):
    data = os.urandom(128 * KiB)
    upstream.add("layer", data)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    redis = RedisServer(tmp_path / "redis")
    await redis.start()
    replicas = [
        SupernodeProcess(tmp_path / f"sn{i}", "--redis", redis.url, "--ui-token-file", str(token_file))
        for i in range(2)
    ]
    peers = []
    try:
        await asyncio.gather(*(r.start() for r in replicas))
        owner, other = replicas
        peers = [await start_peer(tmp_path / f"peer{i}", (owner.url,)) for i in range(3)]
        downloads = [p.ensure(BlobRequest(upstream.url_of("layer"), Digest.of(data))) for p in peers]
        await asyncio.gather(*(d.wait_complete() for d in downloads))

        async with aiohttp.ClientSession() as session:

            async def seen_at_the_other() -> dict | None:
                view = await state(session, other.url, headers=BEARER)
                tasks = [t for t in view["tasks"] if t["id"] == downloads[0].task_id]
                done = tasks and tasks[0]["done"] == 3 and view["nodes"] and len(view["nodes"]) == 3
                return view if done else None

            # The stream asks for node rows everywhere (a page is open at `other`).
            async with session.get(f"{other.url}/ui/api/stream", headers=BEARER):
                view = await until(seen_at_the_other)
        assert view["replicas"] == sorted(r.url for r in replicas)
        assert view["totals"]["registry"] == len(data)
        assert not view["partial"]
    finally:
        for peer in peers:
            await peer.stop()
        for replica in replicas:
            await replica.stop()
        await redis.stop()
