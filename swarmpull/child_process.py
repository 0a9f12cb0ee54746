"""Test helpers shared by the roles: a daemon in a child process, and waiting for one."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp


class DaemonProcess:
    """``python -m MODULE ARGS`` in a child process (its output in ``log``), so a test can
    SIGKILL it like a crash; ``start()`` returns once ``health`` answers 200."""

    def __init__(self, module: str, args: list[str], log: Path, health: str) -> None:
        self._module = module
        self._args = args
        self._log = log
        self._health = health
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float = 20.0) -> None:
        with open(self._log, "ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", self._module, *self._args, stdout=log, stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        async with aiohttp.ClientSession() as session:

            async def healthy() -> bool:
                async with session.get(self._health) as resp:
                    return resp.status == 200

            await until_ready(healthy, timeout, f"{self._module} process did not come up", self.process)

    async def kill(self) -> None:
        """SIGKILL: no goodbye to anyone, connections simply die."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()


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
