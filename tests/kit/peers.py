"""Test helpers: peers in this process, and peers in a process of their own (to kill)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.services import free_port
from peer.config import PeerConfig
from peer.daemon import PeerDaemon
from swarmpull.core.events import NO_EVENTS, EventSink
from swarmpull.edges.http import HostPort
from tests.kit.processes import DaemonProcess

LOOPBACK = HostPort("127.0.0.1", 0)


async def start_peer(
    data_dir: Path, supernodes: tuple[str, ...], events: EventSink = NO_EVENTS, **overrides: Any
) -> PeerDaemon:
    """A started peer daemon on loopback with its piece server on a free port."""
    config = PeerConfig(
        data_dir=data_dir,
        supernodes=supernodes,
        listen=LOOPBACK,
        api_listen=None,
        cache_size=None,
        upload_limit=None,
        download_limit=None,
    )
    daemon = PeerDaemon(dataclasses.replace(config, **overrides), events=events)
    await daemon.start()
    return daemon


class PeerProcess(DaemonProcess):
    """``swarmpull peer`` in a child process, so a test can SIGKILL it like a crash."""

    def __init__(
        self,
        data_dir: Path,
        supernode: str,
        *extra: str,
        fd_limit: int | None = None,
        tls_dir: Path | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.api_port = free_port()
        self.url = f"{'https' if tls_dir else 'http'}://127.0.0.1:{self.port}"
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        args = [
            "--supernode", supernode,
            "--listen", f"127.0.0.1:{self.port}",
            "--api-listen", f"127.0.0.1:{self.api_port}",
            "--data-dir", str(data_dir),
            *extra,
        ]  # fmt: skip
        args += ["--tls-dir", str(tls_dir)] if tls_dir else ["--insecure-cluster"]
        log = data_dir.parent / f"{data_dir.name}.log"
        super().__init__("peer", args, log, f"{self.api_url}/healthz", fd_limit)

    async def metric(self, name: str, **labels: str) -> float:
        """One sample of the child's /metrics."""
        async with aiohttp.ClientSession() as session, session.get(f"{self.url}/metrics", ssl=False) as resp:
            text = await resp.text()
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
        for line in text.splitlines():
            if line.startswith(want + " "):
                return float(line.split()[-1])
        return 0.0
