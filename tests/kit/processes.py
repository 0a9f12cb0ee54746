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

CLUSTER_COMMANDS = ("supernode", "peer", "proxy", "preheat")


def insecure_cluster(args: tuple[str, ...] | list[str]) -> list[str]:
    """``swarmpull ARGS`` with ``--insecure-cluster`` added where the command talks to the
    cluster and ARGS chose no ``--tls-dir``: tests run plain HTTP unless they test TLS."""
    args = list(args)
    words = [a for i, a in enumerate(args) if not a.startswith("-") and args[i - 1 : i] != ["--log-level"]]
    command = words[0] if words else ""
    talks = command in CLUSTER_COMMANDS or (command == "get" and "--supernode" in args)
    if talks and "--tls-dir" not in args and "--insecure-cluster" not in args:
        args.append("--insecure-cluster")
    return args


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
                # Over TLS (a supernode with --tls-dir) the probe checks no certificate:
                # it asks only whether the process answers, as Kubernetes does.
                async with session.get(self._health, ssl=False) as resp:
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
