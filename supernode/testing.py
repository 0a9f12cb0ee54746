"""Test helpers: a supernode on a free loopback port."""

from __future__ import annotations

import dataclasses
from typing import Any

from supernode.config import SupernodeConfig
from supernode.scheduler import SchedulerConfig
from supernode.server import Supernode
from swarmpull.http import HostPort


async def start_supernode(*, scheduler: dict[str, Any] | None = None, **overrides: Any) -> Supernode:
    """A started supernode on 127.0.0.1 (any free port); ``overrides`` set config fields."""
    config = SupernodeConfig(listen=HostPort("127.0.0.1", 0), tick_interval=0.2)
    if scheduler:
        overrides["scheduler"] = dataclasses.replace(SchedulerConfig(), **scheduler)
    config = dataclasses.replace(config, **overrides)
    node = Supernode(config)
    await node.start()
    return node
