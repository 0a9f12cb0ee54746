"""The state a supernode shares with its replicas, behind one interface.

``ClusterState`` is what the service needs from "the other supernodes": who owns a task
(a lease), what an earlier owner left (``TaskRecord``), writing through what a successor
needs (``Batch``), the peers registered anywhere and when they were last heard, events
for tasks owned elsewhere (the inbox), and origin limits that hold for all replicas
together. Two implementations, as Kraken's tracker has a local and a Redis peer store:

- ``memory.LocalCluster``: one supernode, nothing shared; every call is immediate.
- ``redis.RedisCluster``: replicas on Redis (leases, fenced write-through, takeover).

The service holds one and never asks which it is.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from supernode.origin_limits import OriginLimits


class ClusterUnavailable(Exception):
    """The shared state did not answer: the replica cannot claim, load or write tasks."""


class NotOwner(Exception):
    """Another replica owns the task; its URL is ``owner``."""

    def __init__(self, task_id: str, owner: str) -> None:
        super().__init__(f"task {task_id} is owned by the supernode at {owner}")
        self.owner = owner


@dataclass(slots=True)
class Lease:
    token: str
    valid_until: float
    """Monotonic time until which this replica may act as owner without renewing (the
    lease's expiry minus a margin for clock drift and the renewal's own delay)."""


@dataclass(slots=True)
class TaskRecord:
    """What a task's previous owner left."""

    size: int
    piece_size: int
    digest: str | None
    sha: dict[int, str]
    staged: dict[int, bytes]
    holders: dict[str, str]  # peer -> its pieces, a base64 bitfield
    keys: list[str] = field(default_factory=list)  # every owner's signing key, base64


@dataclass(slots=True)
class Batch:
    """One task's writes since the last flush, applied together or not at all."""

    meta: dict[str, str] = field(default_factory=dict)
    sha: dict[int, str] = field(default_factory=dict)
    staged: dict[int, bytes] = field(default_factory=dict)
    unstaged: set[int] = field(default_factory=set)
    holders: dict[str, str | None] = field(default_factory=dict)  # peer -> bitfield, None: left
    keys: set[str] = field(default_factory=set)
    reset: bool = False
    """Forget what earlier writes stored (the upstream's bytes proved wrong)."""

    def __bool__(self) -> bool:
        parts = (self.meta, self.sha, self.staged, self.unstaged, self.holders, self.keys)
        return self.reset or any(parts)

    def merge_into(self, newer: Batch) -> None:
        """Put this (unwritten) batch before ``newer``."""
        if newer.reset:
            return
        newer.reset = self.reset
        newer.meta = {**self.meta, **newer.meta}
        newer.sha = {**self.sha, **newer.sha}
        newer.unstaged |= self.unstaged - set(newer.staged)
        newer.staged = {p: b for p, b in {**self.staged, **newer.staged}.items() if p not in newer.unstaged}
        newer.holders = {**self.holders, **newer.holders}
        newer.keys |= self.keys


class ClusterState(Protocol):
    """Everything a supernode shares with its replicas. Every coroutine may raise
    ClusterUnavailable; none retries."""

    url: str
    """This replica's URL: how others name it as a task's owner."""
    shared: bool
    """Whether other replicas exist (a single supernode knows every peer itself)."""
    origins: OriginLimits

    async def ping(self) -> bool: ...
    async def close(self) -> None: ...

    async def claim(self, task_id: str) -> Lease:
        """Take the task's lease, or raise NotOwner naming the replica that holds it."""

    async def owner(self, task_id: str) -> str | None: ...
    async def release(self, task_id: str, lease: Lease) -> None: ...
    async def load(self, task_id: str) -> TaskRecord | None: ...

    async def write(self, writes: dict[str, tuple[Lease, Batch]]) -> set[str]:
        """Apply each task's batch under its lease and renew it; returns the tasks whose
        lease is gone (nothing was written for them)."""

    async def put_peer(self, peer_id: str, registration: dict[str, Any]) -> None: ...
    async def get_peers(self, peer_ids: list[str]) -> dict[str, dict[str, Any]]: ...
    async def seen(self, peer_ids: Iterable[str]) -> None: ...
    async def last_seen(self, peer_ids: list[str]) -> dict[str, float]: ...

    async def post(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        """Pass events (a peer's holdings, a dropped blob) to the owners of their tasks."""

    async def take_inbox(self, task_ids: list[str]) -> dict[str, list[dict[str, Any]]]: ...

    async def exchange_views(self, view: bytes, watching: bool, ttl: float) -> tuple[list[bytes], bool]:
        """The dashboard's: publish this replica's view (JSON, kept ``ttl`` seconds) and
        read every live replica's, ours included; and whether a dashboard is open at any
        replica (``watching`` says one is open here)."""
