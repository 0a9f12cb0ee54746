"""Origin protection: per-upstream caps on concurrent connections and bandwidth.

Given as ``--origin-limit registry.example.com=200MB/s,8conn`` (repeatable; either part
may be left out) or in a TOML file (``--origin-limits FILE``)::

    [origins."registry.example.com"]
    rate = "200MB/s"
    connections = 8

A host with a port (``my.registry:5000``) matches only that port; a bare host matches
every port. Back-to-source reads queue for a connection and pass the bandwidth limiter
chunk by chunk; nothing is ever fetched twice to make up for it.

With replicas on Redis the caps hold for all of them together: a token bucket and a
count of connections under ``sp:origin:{H}`` (the scripts below), each replica falling
back to its own caps while Redis does not answer.
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

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from swarmpull.core.clock import Clock
from swarmpull.core.units import parse_rate
from swarmpull.edges.ratelimit import RateLimiter

# A token bucket shared by every replica: KEYS[1] hash {tokens, at}; ARGV: bytes, rate,
# burst. Takes the bytes (the bucket may go into debt) and answers the milliseconds the
# taker must wait before using them.
_BANDWIDTH = """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local rate, burst = tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or ms
tokens = math.min(burst, tokens + (ms - at) * rate / 1000) - tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', ms)
redis.call('PEXPIRE', KEYS[1], 60000)
if tokens >= 0 then return 0 end
return math.ceil(-tokens * 1000 / rate)
"""

# Connections to an upstream shared by every replica: KEYS[1] sorted set of holders by
# expiry; ARGV: holder, cap, lease ms. 1: taken (or renewed), 0: every connection in use.
_CONNECTION = """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


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

    def __init__(self, limit: OriginLimit, clock: Clock, client: aioredis.Redis, replica: str) -> None:
        super().__init__(limit, clock)
        self._client = client
        self._replica = replica
        self._bandwidth = client.register_script(_BANDWIDTH)
        self._connection = client.register_script(_CONNECTION)
        self._allowance = 0

    async def _take_connection(self, holder: str, cap: int) -> bool:
        key = f"sp:origin:{{{self.limit.host}}}:connections"
        lease = int(self.CONNECTION_LEASE * 1000)
        return bool(await self._connection(keys=[key], args=[holder, cap, lease]))

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[None]:
        if self.limit.connections is None:
            yield
            return
        holder = f"{self._replica} {uuid.uuid4().hex}"
        try:
            while not await self._take_connection(holder, self.limit.connections):
                await asyncio.sleep(0.1)
        except (RedisError, OSError):
            async with super().connection():
                yield
            return
        renew = asyncio.create_task(self._keep(holder))
        try:
            yield
        finally:
            renew.cancel()
            with contextlib.suppress(RedisError, OSError):
                await self._client.zrem(f"sp:origin:{{{self.limit.host}}}:connections", holder)

    async def _keep(self, holder: str) -> None:
        while True:
            await asyncio.sleep(self.CONNECTION_LEASE / 3)
            with contextlib.suppress(RedisError, OSError):
                await self._take_connection(holder, self.limit.connections or 1)

    async def acquire(self, count: int) -> None:
        rate = self.limit.rate
        if rate is None:
            return
        if self._allowance < count:
            grant = max(count - self._allowance, int(rate * self.GRANT_SECONDS))
            key = f"sp:origin:{{{self.limit.host}}}:bandwidth"
            try:
                wait = await self._bandwidth(keys=[key], args=[grant, rate, grant]) / 1000
            except (RedisError, OSError):
                await super().acquire(count)
                return
            self._allowance += grant
            if wait > 0:
                await asyncio.sleep(wait)
        self._allowance -= count


class OriginLimits:
    """The throttles of every limited upstream: this process's own, or shared by the
    replicas on ``redis`` (named ``replica`` as connection holders)."""

    def __init__(
        self,
        limits: list[OriginLimit],
        clock: Clock,
        redis: aioredis.Redis | None = None,
        replica: str = "",
    ) -> None:
        self._throttles: dict[str, OriginThrottle] = {
            limit.host: OriginThrottle(limit, clock)
            if redis is None
            else SharedOriginThrottle(limit, clock, redis, replica)
            for limit in limits
        }

    def for_url(self, url: str) -> OriginThrottle | None:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if parts.port is not None and f"{host}:{parts.port}" in self._throttles:
            return self._throttles[f"{host}:{parts.port}"]
        return self._throttles.get(host)
