"""Origin protection: per-upstream caps on concurrent connections and bandwidth.

Given as ``--origin-limit registry.example.com=200MB/s,8conn`` (repeatable; either part
may be left out) or in a TOML file (``--origin-limits FILE``)::

    [origins."registry.example.com"]
    rate = "200MB/s"
    connections = 8

A host with a port (``my.registry:5000``) matches only that port; a bare host matches
every port. Back-to-source reads queue for a connection and pass the bandwidth limiter
chunk by chunk; nothing is ever fetched twice to make up for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import tomllib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from supernode.replication import RedisUnavailable, Replication
from swarmpull.core.clock import Clock
from swarmpull.core.units import parse_rate
from swarmpull.edges.ratelimit import RateLimiter


@dataclass(frozen=True, slots=True)
class OriginLimit:
    host: str
    rate: int | None = None
    """Bytes per second read from this upstream, all tasks together."""
    connections: int | None = None
    """Concurrent connections to this upstream."""

    def __post_init__(self) -> None:
        if not self.host or "/" in self.host:
            raise ValueError(f"origin limit needs a host name, not {self.host!r}")
        if self.connections is not None and self.connections < 1:
            raise ValueError("an origin limit needs at least one connection")


def parse_origin_limit(text: str) -> OriginLimit:
    """``HOST=RATE,Nconn`` (``registry.example.com=200MB/s,8conn``)."""
    host, sep, spec = text.partition("=")
    if not sep or not spec:
        raise ValueError(f"an origin limit looks like HOST=200MB/s,8conn, not {text!r}")
    rate = connections = None
    for part in (p.strip() for p in spec.split(",")):
        if part.lower().endswith("conn") and part[:-4].isdigit():
            connections = int(part[:-4])
        else:
            rate = parse_rate(part)
    return OriginLimit(host.strip().lower(), rate, connections)


def load_origin_limits(path: Path) -> list[OriginLimit]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read origin limits from {path}: {exc}") from None
    limits = []
    for host, entry in (data.get("origins") or {}).items():
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: [origins.{host!r}] must be a table")
        rate = entry.get("rate")
        connections = entry.get("connections")
        if connections is not None and not isinstance(connections, int):
            raise ValueError(f"{path}: origins.{host!r}.connections must be a whole number")
        limits.append(OriginLimit(host.lower(), parse_rate(str(rate)) if rate else None, connections))
    return limits


class OriginThrottle:
    """The caps of one upstream (``upstream.Throttle``)."""

    def __init__(self, limit: OriginLimit, clock: Clock) -> None:
        self.limit = limit
        self._limiter = RateLimiter(limit.rate, clock)
        self._connections = asyncio.Semaphore(limit.connections) if limit.connections else None

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[None]:
        if self._connections is None:
            yield
            return
        async with self._connections:
            yield

    async def acquire(self, count: int) -> None:
        await self._limiter.acquire(count)


class SharedOriginThrottle(OriginThrottle):
    """The caps of one upstream held across supernode replicas through Redis: a shared
    token bucket (taken a twentieth of a second of traffic at a time, so the reads do not
    wait for Redis on every chunk) and a shared count of connections. While Redis is
    unreachable each replica falls back to its own caps."""

    GRANT_SECONDS = 0.05
    CONNECTION_LEASE = 30.0  # a crashed replica's connections are freed after this

    def __init__(self, limit: OriginLimit, clock: Clock, replication: Replication) -> None:
        super().__init__(limit, clock)
        self._replication = replication
        self._allowance = 0

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[None]:
        if self.limit.connections is None:
            yield
            return
        holder = f"{self._replication.url} {uuid.uuid4().hex}"
        try:
            while not await self._replication.take_connection(
                self.limit.host, holder, self.limit.connections, self.CONNECTION_LEASE
            ):
                await asyncio.sleep(0.1)
        except RedisUnavailable:
            async with super().connection():
                yield
            return
        renew = asyncio.create_task(self._keep(holder))
        try:
            yield
        finally:
            renew.cancel()
            with contextlib.suppress(RedisUnavailable):
                await self._replication.drop_connection(self.limit.host, holder)

    async def _keep(self, holder: str) -> None:
        while True:
            await asyncio.sleep(self.CONNECTION_LEASE / 3)
            with contextlib.suppress(RedisUnavailable):
                await self._replication.take_connection(
                    self.limit.host, holder, self.limit.connections or 1, self.CONNECTION_LEASE
                )

    async def acquire(self, count: int) -> None:
        rate = self.limit.rate
        if rate is None:
            return
        if self._allowance < count:
            grant = max(count - self._allowance, int(rate * self.GRANT_SECONDS))
            try:
                wait = await self._replication.take_bandwidth(self.limit.host, grant, rate, grant)
            except RedisUnavailable:
                await super().acquire(count)
                return
            self._allowance += grant
            if wait > 0:
                await asyncio.sleep(wait)
        self._allowance -= count


class OriginLimits:
    def __init__(
        self, limits: list[OriginLimit], clock: Clock, replication: Replication | None = None
    ) -> None:
        self._throttles = {
            limit.host: OriginThrottle(limit, clock)
            if replication is None
            else SharedOriginThrottle(limit, clock, replication)
            for limit in limits
        }

    def for_url(self, url: str) -> OriginThrottle | None:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if parts.port is not None and f"{host}:{parts.port}" in self._throttles:
            return self._throttles[f"{host}:{parts.port}"]
        return self._throttles.get(host)
