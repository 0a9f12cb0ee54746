"""Services the load test and the benchmarks start for themselves: a free loopback port,
a real ``redis-server``, waiting for a child process to answer, and its CPU time."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis
from redis.exceptions import RedisError


def free_port() -> int:
    """A TCP port free on loopback now (tests and the load test start servers on it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system) process ``pid`` has used, from ``/proc`` (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def until_ready(
    check: Callable[[], Awaitable[bool]],
    timeout: float,
    message: str,
    process: asyncio.subprocess.Process,
    errors: tuple[type[BaseException], ...] = (OSError, aiohttp.ClientError),
) -> None:
    """Poll ``check`` until it is true; raise if ``process`` exits or time runs out."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            if await check():
                return
        except errors:
            pass
        if process.returncode is not None:
            raise RuntimeError(f"{message}: it exited with {process.returncode}")
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(message)
        await asyncio.sleep(0.1)


class RedisServer:
    """A real ``redis-server`` on a loopback port, its data (AOF) in ``directory``;
    ``restart()`` keeps the data, like an operator restarting Redis."""

    def __init__(self, directory: Path, binary: str = "redis-server") -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._binary = binary
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float = 20.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = await asyncio.create_subprocess_exec(
            self._binary,
            "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.directory),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "",
            "--logfile", str(self.directory / "redis.log"),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        client = aioredis.Redis.from_url(self.url)
        try:
            await until_ready(
                client.ping, timeout, "redis-server did not come up", self.process, (RedisError,)
            )
        finally:
            await client.aclose()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()

    async def restart(self) -> None:
        await self.stop()
        await self.start()
