"""Test helpers: peers in this process, and peers in a process of their own (to kill)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp

from peer.config import PeerConfig
from peer.daemon import PeerDaemon
from swarmpull.http import HostPort, free_port

LOOPBACK = HostPort("127.0.0.1", 0)


async def start_peer(data_dir: Path, supernodes: tuple[str, ...], **overrides: Any) -> PeerDaemon:
    """A started peer daemon on loopback with its piece server on a free port."""
    config = PeerConfig(
        data_dir=data_dir,
        supernodes=supernodes,
        listen=LOOPBACK,
        api_listen=None,
        cache_size=None,
        poll_interval=0.2,
        upload_limit=None,
        download_limit=None,
    )
    daemon = PeerDaemon(dataclasses.replace(config, **overrides))
    await daemon.start()
    return daemon


class PeerProcess:
    """``python -m peer`` in a child process, so a test can SIGKILL it like a crash."""

    def __init__(self, data_dir: Path, supernode: str, *extra: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.api_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self._args = [
            "--supernode", supernode,
            "--listen", f"127.0.0.1:{self.port}",
            "--api-listen", f"127.0.0.1:{self.api_port}",
            "--data-dir", str(data_dir),
            *extra,
        ]  # fmt: skip
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float = 20.0) -> None:
        log = open(self.data_dir.parent / f"{self.data_dir.name}.log", "ab")  # noqa: SIM115
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "peer", *self._args, stdout=log, stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        log.close()
        deadline = asyncio.get_running_loop().time() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    async with session.get(f"{self.api_url}/healthz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if self.process.returncode is not None:
                    raise RuntimeError(f"peer process exited with {self.process.returncode}")
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError("peer process did not come up")
                await asyncio.sleep(0.1)

    async def kill(self) -> None:
        """SIGKILL: no goodbye to the supernode, connections simply die."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()

    async def metric(self, name: str, **labels: str) -> float:
        """One sample of the child's /metrics."""
        async with aiohttp.ClientSession() as session, session.get(f"{self.url}/metrics") as resp:
            text = await resp.text()
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
        for line in text.splitlines():
            if line.startswith(want + " "):
                return float(line.split()[-1])
        return 0.0
