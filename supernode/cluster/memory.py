"""One supernode, nothing shared: it owns every task for as long as it runs."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from supernode.cluster import Batch, Lease, TaskRecord
from supernode.origin_limits import OriginLimits


class LocalCluster:
    """``ClusterState`` for a single supernode: leases never lapse, there is no earlier
    owner to take over from, every peer registered here, and the origin limits are
    this process's own."""

    shared = False

    def __init__(self, url: str, origins: OriginLimits) -> None:
        self.url = url
        self.origins = origins

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None

    async def claim(self, task_id: str) -> Lease:
        return Lease("local", math.inf)

    async def owner(self, task_id: str) -> str | None:
        return self.url

    async def release(self, task_id: str, lease: Lease) -> None:
        return None

    async def load(self, task_id: str) -> TaskRecord | None:
        return None

    async def write(self, writes: dict[str, tuple[Lease, Batch]]) -> set[str]:
        return set()

    async def put_peer(self, peer_id: str, registration: dict[str, Any]) -> None:
        return None

    async def get_peers(self, peer_ids: list[str]) -> dict[str, dict[str, Any]]:
        return {}

    async def seen(self, peer_ids: Iterable[str]) -> None:
        return None

    async def last_seen(self, peer_ids: list[str]) -> dict[str, float]:
        return {}

    async def post(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        return None

    async def take_inbox(self, task_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        return {}

    async def exchange_views(self, view: bytes, watching: bool, ttl: float) -> tuple[list[bytes], bool]:
        return [view], watching
