"""Test kit: a swarmpull daemon in a child process, so a test can kill it like a crash."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp

from loadtest.services import until_ready


class DaemonProcess:
    """``python -m swarmpull COMMAND ARGS`` in a child process (its output in ``log``), so
    a test can SIGKILL it like a crash; ``start()`` returns once ``health`` answers 200."""

    def __init__(self, command: str, args: list[str], log: Path, health: str) -> None:
        self._command = command
        self._args = args
        self._log = log
        self._health = health
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float = 20.0) -> None:
        with open(self._log, "ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "swarmpull", self._command, *self._args, stdout=log, stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        async with aiohttp.ClientSession() as session:

            async def healthy() -> bool:
                async with session.get(self._health) as resp:
                    return resp.status == 200

            await until_ready(healthy, timeout, f"swarmpull {self._command} did not come up", self.process)

    async def kill(self) -> None:
        """SIGKILL: no goodbye to anyone, connections simply die."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()
