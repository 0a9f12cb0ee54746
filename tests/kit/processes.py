"""Test kit: a swarmpull daemon in a child process, so a test can kill it like a crash."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import sys
from pathlib import Path

import aiohttp

from loadtest.services import until_ready


class DaemonProcess:
    """``python -m swarmpull COMMAND ARGS`` in a child process (its output in ``log``), so
    a test can SIGKILL it like a crash; ``start()`` returns once ``health`` answers 200.
    ``fd_limit``: the child's soft and hard limits on open files (a small machine's)."""

    def __init__(
        self, command: str, args: list[str], log: Path, health: str, fd_limit: int | None = None
    ) -> None:
        self._command = command
        self._args = args
        self._log = log
        self._health = health
        self._fd_limit = fd_limit
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float = 20.0) -> None:
        with open(self._log, "ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "swarmpull", self._command, *self._args, stdout=log, stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=self._limit_fds,
            )  # fmt: skip
        async with aiohttp.ClientSession() as session:

            async def healthy() -> bool:
                async with session.get(self._health) as resp:
                    return resp.status == 200

            await until_ready(healthy, timeout, f"swarmpull {self._command} did not come up", self.process)

    def _limit_fds(self) -> None:
        if self._fd_limit is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self._fd_limit, self._fd_limit))

    @property
    def log(self) -> str:
        """What the child wrote so far."""
        return self._log.read_text(errors="replace") if self._log.exists() else ""

    async def kill(self) -> None:
        """SIGKILL: no goodbye to anyone, connections simply die."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()
