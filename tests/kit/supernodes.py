"""Test kit: a supernode on a free loopback port, supernode processes, a real Redis."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from loadtest.services import RedisServer, free_port
from supernode.config import SupernodeConfig
from supernode.scheduler import SchedulerConfig
from supernode.server import Supernode
from swarmpull.core.events import NO_EVENTS, EventSink
from swarmpull.edges.http import HostPort
from swarmpull.edges.registry import RegistryOptions
from tests.kit.processes import DaemonProcess

__all__ = ["LOOPBACK_UPSTREAMS", "RedisServer", "SupernodeProcess", "start_supernode"]

# Tests serve upstreams on loopback, which a supernode reads only when allowed explicitly.
LOOPBACK_UPSTREAMS = ("127.0.0.1",)


async def start_supernode(
    *,
    scheduler: dict[str, Any] | None = None,
    insecure: tuple[str, ...] = (),
    events: EventSink = NO_EVENTS,
    **overrides: Any,
) -> Supernode:
    """A started supernode on 127.0.0.1 (any free port), speaking plain HTTP to the
    registries ``insecure`` names; ``overrides`` set config fields."""
    registry = RegistryOptions(insecure_registries=frozenset(insecure))
    config = SupernodeConfig(listen=HostPort("127.0.0.1", 0), tick_interval=0.2, registry=registry)
    config = dataclasses.replace(config, upstream_allow=LOOPBACK_UPSTREAMS)
    if scheduler:
        overrides["scheduler"] = dataclasses.replace(SchedulerConfig(), **scheduler)
    config = dataclasses.replace(config, **overrides)
    node = Supernode(config, events=events)
    await node.start()
    return node


class SupernodeProcess(DaemonProcess):
    """``python -m supernode`` in a child process, so a test can SIGKILL it (no lease
    released, no state flushed)."""

    def __init__(
        self, data_dir: Path, *extra: str, fd_limit: int | None = None, tls_dir: Path | None = None
    ) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"{'https' if tls_dir else 'http'}://127.0.0.1:{self.port}"
        args = ["--listen", f"127.0.0.1:{self.port}", "--data-dir", str(data_dir), *extra]
        args += ["--tls-dir", str(tls_dir)] if tls_dir else ["--insecure-cluster"]
        args += [arg for upstream in LOOPBACK_UPSTREAMS for arg in ("--upstream-allow", upstream)]
        super().__init__("supernode", args, data_dir / "supernode.log", f"{self.url}/healthz", fd_limit)
