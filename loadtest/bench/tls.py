"""``swarmpull benchmarks tls``: what mutual TLS costs against plain HTTP, on loopback.

A server process (aiohttp on uvloop, as the daemons) serves the same app three times: over
plain HTTP, and over HTTPS requiring client certificates of a throwaway cluster CA, once
with ECDSA P-256 keys and once with Ed25519 keys (the production contexts and identity
middleware of ``swarmpull.edges.tls``). This process is the client. Three measurements,
each run three times, plain and TLS alternating:

- pieces: GETs of a 4 MiB piece held in memory, written in 256 KiB chunks as the piece
  server writes them, over one kept-alive connection: throughput, and the CPU each side
  spends per GiB.
- json: POSTs of 1 kB of JSON answered with 1 kB, from 16 kept-alive connections at once:
  requests per second, and the server's CPU per request.
- handshakes: one small GET per new connection: the server's and the client's CPU per
  connection, with P-256 and with Ed25519 keys, and with P-256 keys and session tickets
  (which the production context does not send). The difference between TLS and plain is
  the handshake.

The server's CPU time is read from ``/proc``; the client's is this process's.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import shutil
import ssl
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from aiohttp import web

from loadtest.services import cpu_seconds
from swarmpull.core.identity import Role
from swarmpull.edges.http import HostPort, bind, read_json, start_site
from swarmpull.edges.tls import CertificateAuthority, ClusterTls, identity_middleware, write_tls_dir
from swarmpull.edges.tls.authority import KeyType

PIECE = 4 << 20
CHUNK = 256 * 1024
JSON_SIZE = 1000
SERVER, CLIENT = "bench-server", "bench-client"
GiB = 1 << 30
KEYS = {"P-256": KeyType.P256, "Ed25519": KeyType.ED25519}
TICKETS = "P-256 +tickets"


@dataclass(frozen=True, slots=True)
class ServerSpec:
    tls_dirs: dict[str, str]  # key type label: the server's TLS directory


def server_main(spec: ServerSpec, conn: Connection) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(_serve(spec, conn))


def _app(authenticated: bool) -> web.Application:
    piece = memoryview(os.urandom(PIECE))
    answer = {"ok": True, "data": "y" * (JSON_SIZE - 24)}

    async def get_piece(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = PIECE
        await resp.prepare(request)
        for start in range(0, PIECE, CHUNK):
            await resp.write(piece[start : start + CHUNK])
        await resp.write_eof()
        return resp

    async def post_json(request: web.Request) -> web.Response:
        await read_json(request)
        return web.json_response(answer)

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application(middlewares=[identity_middleware()] if authenticated else [])
    app.add_routes([web.get("/piece", get_piece), web.post("/json", post_json), web.get("/hello", hello)])
    return app


async def _serve(spec: ServerSpec, conn: Connection) -> None:
    now = datetime.now(UTC)
    runners, urls = [], {}
    sock, bound = bind(HostPort("127.0.0.1", 0))
    runner, _ = await start_site(_app(False), sock)
    runners.append(runner)
    urls["plain"] = f"http://127.0.0.1:{bound.port}"
    contexts = {}
    for label, directory in spec.tls_dirs.items():
        contexts[label] = ClusterTls.load(Path(directory), now=now, role=Role.NODE).server
    # The production context sends no session tickets (asyncio clients cannot resume a
    # session); this one sends OpenSSL's default two, to measure what that saves.
    tickets = contexts[TICKETS] = ClusterTls.load(Path(spec.tls_dirs["P-256"]), now=now).server
    tickets.num_tickets = 2
    tickets.options &= ~ssl.OP_NO_TICKET
    for label, context in contexts.items():
        sock, bound = bind(HostPort("127.0.0.1", 0))
        runner, _ = await start_site(_app(True), sock, ssl_context=context)
        runners.append(runner)
        urls[label] = f"https://127.0.0.1:{bound.port}"
    conn.send(urls)
    await asyncio.to_thread(conn.recv)  # until told to stop
    for runner in runners:
        await runner.cleanup()


# ------------------------------------------------------------------ client


@dataclass(frozen=True, slots=True)
class Target:
    label: str
    url: str
    request_args: dict[str, Any]


async def _pieces(target: Target, pid: int, count: int) -> dict[str, float]:
    """Throughput of ``count`` piece GETs over one kept-alive connection."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:

        async def fetch() -> int:
            received = 0
            async with session.get(f"{target.url}/piece", **target.request_args) as resp:
                async for chunk in resp.content.iter_chunked(CHUNK):
                    received += len(chunk)
            return received

        await fetch()  # the connection (and its handshake) before the clock starts
        server0, client0, start = cpu_seconds(pid), time.process_time(), time.monotonic()
        received = sum([await fetch() for _ in range(count)])
        elapsed = time.monotonic() - start
        server, client = cpu_seconds(pid) - server0, time.process_time() - client0
    gib = received / GiB
    return {"rate": received / elapsed, "server": server / gib, "client": client / gib}


async def _json(target: Target, pid: int, connections: int, seconds: float) -> dict[str, float]:
    """Requests per second of 1 kB JSON POSTs from ``connections`` kept-alive connections."""
    body = {"peer": CLIENT, "data": "x" * (JSON_SIZE - 30)}
    done = 0
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def post() -> None:
            async with session.post(f"{target.url}/json", json=body, **target.request_args) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{target.label}: the server answered {resp.status}")

        await asyncio.gather(*(post() for _ in range(connections)))  # open every connection
        deadline = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                await post()
                done += 1

        server0, start = cpu_seconds(pid), time.monotonic()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.monotonic() - start
        server = cpu_seconds(pid) - server0
    return {"rate": done / elapsed, "server": server / done}


async def _handshakes(target: Target, pid: int, count: int) -> dict[str, float]:
    """CPU per new connection carrying one small GET, on each side."""
    connector = aiohttp.TCPConnector(force_close=True)  # a new connection for every request
    async with aiohttp.ClientSession(connector=connector) as session:

        async def hello() -> None:
            async with session.get(f"{target.url}/hello", **target.request_args) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{target.label}: the server answered {resp.status}")

        await hello()
        server0, client0 = cpu_seconds(pid), time.process_time()
        for _ in range(count):
            await hello()
        server, client = cpu_seconds(pid) - server0, time.process_time() - client0
    return {"server": server / count, "client": client / count}


async def _negotiated(target: Target) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{target.url}/piece", **target.request_args) as resp,
    ):
        ssl_object = resp.connection.transport.get_extra_info("ssl_object")  # type: ignore[union-attr]
        return f"{ssl_object.version()}, {ssl_object.cipher()[0]}"


def _spread(values: list[float], scale: float, fmt: str) -> str:
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{low * scale:{fmt}} / {mid * scale:{fmt}} / {high * scale:{fmt}}"


Measure = Callable[[Target], Awaitable[dict[str, float]]]
Results = dict[str, dict[str, list[float]]]  # {target label: {figure: [one value per run]}}


async def _runs(targets: list[Target], measure: Measure, runs: int) -> Results:
    """``runs`` rounds of ``measure`` on every target in turn, after one round that is not
    counted (it warms up both processes): {label: {figure: [values]}}."""
    for target in targets:
        await measure(target)
    results: Results = {t.label: {} for t in targets}
    for _ in range(runs):
        for target in targets:
            for key, value in (await measure(target)).items():
                results[target.label].setdefault(key, []).append(value)
    return results


async def run_tls(runs: int = 3, pieces: int = 64, json_seconds: float = 3.0, connections: int = 400) -> str:
    root = Path(tempfile.mkdtemp(prefix="swarmpull-bench-tls-"))
    now = datetime.now(UTC)
    client_tls: dict[str, ClusterTls] = {}
    server_dirs = {}
    for label, kind in KEYS.items():
        ca = CertificateAuthority.generate(now=now, days=2, key_type=kind)
        for name in (SERVER, CLIENT):
            write_tls_dir(root / label / name, ca.issue(name, Role.NODE, now=now, days=1), [ca.certificate])
        server_dirs[label] = str(root / label / SERVER)
        client_tls[label] = ClusterTls.load(root / label / CLIENT, now=now, role=Role.NODE)
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    server = context.Process(target=server_main, args=(ServerSpec(server_dirs), child), daemon=True)
    server.start()
    child.close()
    try:
        urls = await asyncio.to_thread(parent.recv)
        pid = server.pid
        assert pid is not None
        plain = Target("plain", urls["plain"], {})
        tls = {
            label: Target(f"mTLS {label}", urls[label], client_tls[label].to_node(SERVER)) for label in KEYS
        }
        tls[TICKETS] = Target(f"mTLS {TICKETS}", urls[TICKETS], client_tls["P-256"].to_node(SERVER))
        default = tls["P-256"]
        negotiated = await _negotiated(default)
        piece = await _runs([plain, default], lambda t: _pieces(t, pid, pieces), runs)
        json = await _runs([plain, default], lambda t: _json(t, pid, 16, json_seconds), runs)
        shakes = await _runs([plain, *tls.values()], lambda t: _handshakes(t, pid, connections), runs)
    finally:
        parent.send("stop")
        server.join(timeout=30)
        if server.is_alive():
            server.kill()
        shutil.rmtree(root, ignore_errors=True)
    settings = (runs, pieces, json_seconds, connections)
    return _render(settings, negotiated, plain, default, piece, json, shakes)


def _ratio(tls: list[float], plain: list[float]) -> str:
    """The ratio of the medians, TLS over plain (``n/a`` when plain measured zero: CPU time
    is counted in ticks of 10 ms)."""
    low = statistics.median(plain)
    return f"{statistics.median(tls) / low:.2f}x" if low else "n/a"


def _render(
    settings: tuple[int, int, float, int],
    negotiated: str,
    plain: Target,
    default: Target,
    piece: Results,
    json: Results,
    shakes: Results,
) -> str:
    med = statistics.median
    p, t = piece[plain.label], piece[default.label]
    j, k = json[plain.label], json[default.label]
    runs, pieces, json_seconds, connections = settings
    lines = [
        f"tls: mutual TLS against plain HTTP, loopback, server and client in two processes; "
        f"{runs} runs, min / median / max",
        f"  {default.label}: {negotiated}, client certificates required and checked per request",
        f"  pieces: {pieces} GETs of 4 MiB per run, one kept-alive connection",
    ]
    for label, r in ((plain.label, p), (default.label, t)):
        lines.append(
            f"    {label:<14}{_spread(r['rate'], 1e-6, '6.0f')} MB/s   CPU per GiB: server "
            f"{med(r['server']):.2f} s, client {med(r['client']):.2f} s"
        )
    lines.append(
        f"    TLS/plain     throughput {_ratio(t['rate'], p['rate'])}, CPU per byte: server "
        f"{_ratio(t['server'], p['server'])}, client {_ratio(t['client'], p['client'])}"
    )
    lines.append(
        f"  json: POST of {JSON_SIZE / 1000:.0f} kB answered with {JSON_SIZE / 1000:.0f} kB, "
        f"16 kept-alive connections, {json_seconds:g} s per run"
    )
    for label, r in ((plain.label, j), (default.label, k)):
        lines.append(
            f"    {label:<14}{_spread(r['rate'], 1, '6.0f')} requests/s   "
            f"server CPU {med(r['server']) * 1e6:.0f} us per request"
        )
    lines.append(
        f"    TLS/plain     requests/s {_ratio(k['rate'], j['rate'])}, "
        f"server CPU per request {_ratio(k['server'], j['server'])}"
    )
    lines.append(f"  handshakes: {connections} new connections per run, one small GET on each")
    base = shakes[plain.label]
    for label, r in shakes.items():
        extra = ""
        if label != plain.label:
            server = med(r["server"]) - med(base["server"])
            client = med(r["client"]) - med(base["client"])
            extra = f"   handshake (minus plain): server {server * 1e6:.0f} us, client {client * 1e6:.0f} us"
        lines.append(
            f"    {label:<20}server CPU {_spread(r['server'], 1e6, '5.0f')} us per connection, "
            f"client {med(r['client']) * 1e6:.0f} us{extra}"
        )
    return "\n".join(lines)
