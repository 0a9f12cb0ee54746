"""Test helpers: a supernode on a free loopback port, supernode processes, a real Redis."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from supernode.config import SupernodeConfig
from supernode.scheduler import SchedulerConfig
from supernode.server import Supernode
from swarmpull.child_process import DaemonProcess, until_ready
from swarmpull.http import HostPort, free_port


async def start_supernode(*, scheduler: dict[str, Any] | None = None, **overrides: Any) -> Supernode:
    """A started supernode on 127.0.0.1 (any free port); ``overrides`` set config fields."""
    config = SupernodeConfig(listen=HostPort("127.0.0.1", 0), tick_interval=0.2)
    if scheduler:
        overrides["scheduler"] = dataclasses.replace(SchedulerConfig(), **scheduler)
    config = dataclasses.replace(config, **overrides)
    node = Supernode(config)
    await node.start()
    return node


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


class SupernodeProcess(DaemonProcess):
    """``python -m supernode`` in a child process, so a test can SIGKILL it (no lease
    released, no state flushed)."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = ["--listen", f"127.0.0.1:{self.port}", "--data-dir", str(data_dir), *extra]
        super().__init__("supernode", args, data_dir / "supernode.log", f"{self.url}/healthz")
