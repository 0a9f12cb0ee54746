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
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from swarmpull.clock import Clock
from swarmpull.ratelimit import RateLimiter
from swarmpull.units import parse_rate


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


class OriginLimits:
    def __init__(self, limits: list[OriginLimit], clock: Clock) -> None:
        self._throttles = {limit.host: OriginThrottle(limit, clock) for limit in limits}

    def for_url(self, url: str) -> OriginThrottle | None:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if parts.port is not None and f"{host}:{parts.port}" in self._throttles:
            return self._throttles[f"{host}:{parts.port}"]
        return self._throttles.get(host)
