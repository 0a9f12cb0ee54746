"""One end of the background benchmark, run inside a network namespace by
``loadtest.bench.background`` (``ip netns exec NS python -m loadtest.bench.netns_node``).

    sink   ADDR PORT                  accept one TCP flow; print bytes received, every 0.1 s
    source ADDR PORT SECONDS          send one TCP flow to ADDR:PORT for SECONDS
    seed   ADDR TRANSPORT TORRENT DIR seed the torrent's file from DIR; print the port
    leech  ADDR TRANSPORT TORRENT DIR SEED_ADDR SEED_PORT
                                      fetch the torrent from the seed; print the seconds

Every line printed is JSON. The libtorrent ends use the production session and settings
(``swarmpull.edges.torrent``), the transport (``tcp`` or ``utp``) as a node's
``--preheat-transport`` sets it. Each role stops by itself (``seed`` when its stdin closes).
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from pathlib import Path

from swarmpull.core.bencode import decode
from swarmpull.edges.http import HostPort
from swarmpull.edges.torrent import TorrentConfig, TorrentSession, Transport, parse_torrent

CHUNK = 256 * 1024


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def sink(addr: str, port: int) -> None:
    with socket.create_server((addr, port)) as server:
        say(ready=True)
        conn, _ = server.accept()
        with conn:
            conn.settimeout(120)
            total, last = 0, time.monotonic()
            while data := conn.recv(CHUNK):
                total += len(data)
                now = time.monotonic()
                if now - last >= 0.1:
                    say(t=now, bytes=total)
                    last = now
            say(t=time.monotonic(), bytes=total, end=True)


def source(addr: str, port: int, seconds: float) -> None:
    payload = bytes(CHUNK)
    with socket.create_connection((addr, port), timeout=10) as conn:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            conn.sendall(payload)


def _session(addr: str, transport: str) -> TorrentSession:
    config = TorrentConfig(listen=HostPort(addr, 0), transport=Transport(transport))
    return TorrentSession(config, "bench")


def _meta(torrent: Path):  # type: ignore[no-untyped-def]
    data = torrent.read_bytes()
    info = decode(data)[b"info"]
    name = info[b"name"].decode()
    size = info[b"file tree"][name.encode()][b""][b"length"]
    return parse_torrent(data, name=name, size=size)


async def seed(addr: str, transport: str, torrent: Path, directory: Path) -> None:
    session = _session(addr, transport)
    await session.start()
    try:
        await session.add(_meta(torrent), directory, seed=True)
        assert session.listen is not None
        say(port=session.listen.port)
        await asyncio.to_thread(sys.stdin.read)  # until the coordinator closes it
    finally:
        await session.stop()


async def leech(addr: str, transport: str, torrent: Path, directory: Path, seed_addr: str, port: int) -> None:
    session = _session(addr, transport)
    await session.start()
    try:
        started = time.monotonic()
        handle = await session.add(_meta(torrent), directory)
        handle.connect(seed_addr, port)
        await asyncio.wait_for(handle.finished(), 600)
        say(seconds=time.monotonic() - started, started=started)
    finally:
        await session.stop()


def main(argv: list[str]) -> None:
    role, *args = argv
    if role == "sink":
        sink(args[0], int(args[1]))
    elif role == "source":
        source(args[0], int(args[1]), float(args[2]))
    elif role == "seed":
        asyncio.run(seed(args[0], args[1], Path(args[2]), Path(args[3])))
    elif role == "leech":
        asyncio.run(leech(args[0], args[1], Path(args[2]), Path(args[3]), args[4], int(args[5])))
    else:
        raise SystemExit(f"unknown role {role}")


if __name__ == "__main__":
    main(sys.argv[1:])
