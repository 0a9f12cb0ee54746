"""Supernode replicas sharing task state through Redis.

Each task is owned by one replica at a time through a lease; the owner keeps the task's
scheduling state in memory (the hot path never waits for Redis) and writes through, in
one fenced script call per task and tick, what a successor needs: the geometry, each
piece's sha256, the pieces read from upstream that no peer holds yet (their bytes, so a
successor never reads them again), and which peers hold which pieces.

Key layout. Every key of a task carries the hash tag ``{T}``, so on a Redis Cluster a
task's keys share a slot and each script touches one slot:

    sp:{T}:lease   "EPOCH URL", expires after lease_ttl: the owner and its fencing epoch
    sp:{T}:epoch   bumped by every acquisition
    sp:{T}:meta    hash: size, piece_size, digest
    sp:{T}:sha     hash: piece -> sha256 hex of every piece read from upstream
    sp:{T}:staged  hash: piece -> bytes, read from upstream and held by no peer yet
    sp:{T}:log     list: "PEER +1,2,3" (holds pieces) and "PEER -" (left), in order
    sp:{T}:inbox   list: events other replicas pass to the owner (JSON)
    sp:peer:{P}    a peer's registration (JSON), readable by every replica
    sp:seen        sorted set: peer -> wall-clock time of its last heartbeat anywhere
    sp:origin:{H}:bandwidth, sp:origin:{H}:connections   origin limits of upstream H,
                   shared by every replica

A write is applied only while the writer's lease is still the current one (the script
compares it first), so a replica that lost its lease cannot write any more.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

DATA_TTL_MS = 7 * 24 * 3600 * 1000  # task keys outlive any rollout, then clean themselves up
PEER_TTL_S = 24 * 3600
MAX_ARGS = 2000  # arguments per command inside a script call (Lua's unpack limit is ~8000)

_ACQUIRE = """
local current = redis.call('GET', KEYS[1])
if current then return {0, current} end
local token = redis.call('INCR', KEYS[2]) .. ' ' .. ARGV[1]
redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return {1, token}
"""

# ARGV: token, lease_ttl_ms, then commands as: N, NAME, KEY_INDEX, N-2 arguments.
_FENCED = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
local i = 3
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local command = {ARGV[i + 1], KEYS[tonumber(ARGV[i + 2])]}
  for j = 3, n do command[j] = ARGV[i + j] end
  redis.call(unpack(command))
  i = i + n + 1
end
return 1
"""

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

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_LEASE, _META, _SHA, _STAGED, _LOG = 1, 2, 3, 4, 5  # KEYS indexes in the fenced script


class RedisUnavailable(Exception):
    """Redis did not answer: the replica cannot claim, load or write tasks."""


class NotOwner(Exception):
    """Another replica owns the task; its URL is ``owner``."""

    def __init__(self, task_id: str, owner: str) -> None:
        super().__init__(f"task {task_id} is owned by the supernode at {owner}")
        self.owner = owner


def task_keys(task_id: str) -> list[str]:
    tag = f"sp:{{{task_id}}}"
    return [f"{tag}:lease", f"{tag}:meta", f"{tag}:sha", f"{tag}:staged", f"{tag}:log"]


def _inbox(task_id: str) -> str:
    return f"sp:{{{task_id}}}:inbox"


@dataclass(slots=True)
class Lease:
    token: str
    valid_until: float
    """Monotonic time until which this replica may act as owner without renewing (the
    Redis expiry minus a margin for clock drift and the renewal's own delay)."""


@dataclass(slots=True)
class TaskRecord:
    """What a task's previous owner left in Redis."""

    size: int
    piece_size: int
    digest: str | None
    sha: dict[int, str]
    staged: dict[int, bytes]
    holders: dict[str, set[int]]


@dataclass(slots=True)
class Batch:
    """One task's writes since the last flush, applied together or not at all."""

    meta: dict[str, str] = field(default_factory=dict)
    sha: dict[int, str] = field(default_factory=dict)
    staged: dict[int, bytes] = field(default_factory=dict)
    unstaged: set[int] = field(default_factory=set)
    log: list[str] = field(default_factory=list)
    reset: bool = False
    """Forget what earlier writes stored (the upstream's bytes proved wrong)."""

    def holds(self, peer_id: str, pieces: Iterable[int]) -> None:
        text = ",".join(map(str, pieces))
        if text:
            self.log.append(f"{peer_id} +{text}")

    def left(self, peer_id: str) -> None:
        self.log.append(f"{peer_id} -")

    def merge_into(self, newer: Batch) -> None:
        """Put this (unwritten) batch before ``newer``."""
        if newer.reset:
            return
        newer.reset = self.reset
        newer.meta = {**self.meta, **newer.meta}
        newer.sha = {**self.sha, **newer.sha}
        newer.unstaged |= self.unstaged - set(newer.staged)
        newer.staged = {p: b for p, b in {**self.staged, **newer.staged}.items() if p not in newer.unstaged}
        newer.log[:0] = self.log

    def args(self) -> list[Any]:
        out: list[Any] = []

        def command(name: str, key: int, values: list[Any]) -> None:
            for start in range(0, len(values), MAX_ARGS):
                chunk = values[start : start + MAX_ARGS]
                out.extend([len(chunk) + 2, name, key, *chunk])

        if self.reset:
            out.extend(x for key in (_META, _SHA, _STAGED, _LOG) for x in (2, "DEL", key))
        if self.meta:
            command("HSET", _META, [x for kv in self.meta.items() for x in kv])
        if self.sha:
            command("HSET", _SHA, [x for kv in self.sha.items() for x in kv])
        if self.staged:
            command("HSET", _STAGED, [x for kv in self.staged.items() for x in kv])
        if self.unstaged:
            command("HDEL", _STAGED, sorted(self.unstaged))
        if self.log:
            command("RPUSH", _LOG, self.log)
        if out:
            for key in (_META, _SHA, _STAGED, _LOG):
                out.extend([3, "PEXPIRE", key, DATA_TTL_MS])
        return out


class Replication:
    """This replica's view of Redis: leases, task records, peers, inboxes.

    Every method raises RedisUnavailable when Redis does not answer; none retries.
    """

    def __init__(
        self, client: aioredis.Redis, url: str, lease_ttl: float, monotonic: Callable[[], float]
    ) -> None:
        self.url = url
        self.lease_ttl = lease_ttl
        self._client = client
        self._monotonic = monotonic
        self._acquire = client.register_script(_ACQUIRE)
        self._fenced = client.register_script(_FENCED)
        self._release = client.register_script(_RELEASE)
        self._bandwidth = client.register_script(_BANDWIDTH)
        self._connection = client.register_script(_CONNECTION)

    @classmethod
    def connect(
        cls, redis_url: str, password: str | None, url: str, lease_ttl: float, monotonic: Callable[[], float]
    ) -> Replication:
        client = aioredis.Redis.from_url(
            redis_url,
            password=password,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            health_check_interval=10,
        )
        return cls(client, url, lease_ttl, monotonic)

    async def close(self) -> None:
        await self._client.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self._client.ping())
        except (RedisError, OSError):
            return False

    def _lease(self, token: str, started: float) -> Lease:
        return Lease(token, started + self.lease_ttl * 0.8)

    # ------------------------------------------------------------------ leases

    async def claim(self, task_id: str) -> Lease:
        """Take the task's lease, or raise NotOwner with the current owner's URL."""
        started = self._monotonic()
        keys = task_keys(task_id)
        epoch_key = keys[0].replace(":lease", ":epoch")
        ttl_ms = int(self.lease_ttl * 1000)
        won, token = await self._call(
            self._acquire(keys=[keys[0], epoch_key], args=[self.url, ttl_ms, DATA_TTL_MS])
        )
        token = token.decode()
        owner = token.partition(" ")[2]
        if not won and owner != self.url:
            raise NotOwner(task_id, owner)
        if not won:  # our own lease from before a restart: nobody else holds it, keep it
            log.info("task %s: resuming our earlier lease", task_id)
        return self._lease(token, started)

    async def owner(self, task_id: str) -> str | None:
        token = await self._call(self._client.get(task_keys(task_id)[0]))
        return token.decode().partition(" ")[2] if token else None

    async def write(self, writes: dict[str, tuple[Lease, Batch]]) -> set[str]:
        """Apply each task's batch under its lease and renew the lease; returns the tasks
        whose lease is gone (nothing was written for them)."""
        if not writes:
            return set()
        started = self._monotonic()
        ttl_ms = int(self.lease_ttl * 1000)
        async with self._client.pipeline(transaction=False) as pipe:
            for task_id, (lease, batch) in writes.items():
                await self._fenced(
                    keys=task_keys(task_id), args=[lease.token, ttl_ms, *batch.args()], client=pipe
                )
            results = await self._call(pipe.execute())
        lost = set()
        for (task_id, (lease, _)), ok in zip(writes.items(), results, strict=True):
            if ok:
                lease.valid_until = started + self.lease_ttl * 0.8
            else:
                lost.add(task_id)
        return lost

    async def release(self, task_id: str, lease: Lease) -> None:
        await self._call(self._release(keys=[task_keys(task_id)[0]], args=[lease.token]))

    # ----------------------------------------------------------------- records

    async def load(self, task_id: str) -> TaskRecord | None:
        _, meta_key, sha_key, staged_key, log_key = task_keys(task_id)
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.hgetall(meta_key).hgetall(sha_key).hgetall(staged_key).lrange(log_key, 0, -1)
            meta, sha, staged, entries = await self._call(pipe.execute())
        if not meta:
            return None
        holders: dict[str, set[int]] = {}
        for entry in entries:
            peer, _, pieces = entry.decode().partition(" ")
            if pieces == "-":
                holders.pop(peer, None)
            else:
                holders.setdefault(peer, set()).update(int(p) for p in pieces[1:].split(","))
        digest = meta.get(b"digest")
        return TaskRecord(
            int(meta[b"size"]),
            int(meta[b"piece_size"]),
            digest.decode() if digest else None,
            {int(p): s.decode() for p, s in sha.items()},
            {int(p): bytes(b) for p, b in staged.items()},
            holders,
        )

    # ---------------------------------------------------------- peers, inboxes

    async def put_peer(self, peer_id: str, registration: dict[str, Any]) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.set(f"sp:peer:{peer_id}", json.dumps(registration), ex=PEER_TTL_S)
            pipe.zadd("sp:seen", {peer_id: time.time()})
            await self._call(pipe.execute())

    async def get_peers(self, peer_ids: list[str]) -> dict[str, dict[str, Any]]:
        if not peer_ids:
            return {}
        values = await self._call(self._client.mget([f"sp:peer:{p}" for p in peer_ids]))
        return {p: json.loads(v) for p, v in zip(peer_ids, values, strict=True) if v}

    async def seen(self, peer_ids: Iterable[str]) -> None:
        ids = list(peer_ids)
        if ids:
            now = time.time()
            await self._call(self._client.zadd("sp:seen", dict.fromkeys(ids, now)))

    async def last_seen(self, peer_ids: list[str]) -> dict[str, float]:
        """Wall-clock time of each peer's last heartbeat at any replica."""
        if not peer_ids:
            return {}
        scores = await self._call(self._client.zmscore("sp:seen", peer_ids))
        return {p: s for p, s in zip(peer_ids, scores, strict=True) if s is not None}

    async def post(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        """Pass events (a peer's holdings, a dropped blob) to the owners of their tasks."""
        if not events:
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for task_id, event in events:
                pipe.rpush(_inbox(task_id), json.dumps(event)).pexpire(_inbox(task_id), DATA_TTL_MS)
            await self._call(pipe.execute())

    async def take_inbox(self, task_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        if not task_ids:
            return {}
        async with self._client.pipeline(transaction=False) as pipe:
            for task_id in task_ids:  # one key per command: fine on a cluster
                pipe.lpop(_inbox(task_id), 10_000)
            results = await self._call(pipe.execute())
        return {t: [json.loads(e) for e in r] for t, r in zip(task_ids, results, strict=True) if r}

    # ----------------------------------------------------------- origin limits

    async def take_bandwidth(self, host: str, count: int, rate: int, burst: int) -> float:
        """Take ``count`` bytes from the upstream's shared bucket; seconds to wait."""
        key = f"sp:origin:{{{host}}}:bandwidth"
        return await self._call(self._bandwidth(keys=[key], args=[count, rate, burst])) / 1000

    async def take_connection(self, host: str, holder: str, cap: int, lease: float) -> bool:
        """Take (or keep) one of the upstream's ``cap`` shared connections for ``lease`` s."""
        key = f"sp:origin:{{{host}}}:connections"
        return bool(await self._call(self._connection(keys=[key], args=[holder, cap, int(lease * 1000)])))

    async def drop_connection(self, host: str, holder: str) -> None:
        await self._call(self._client.zrem(f"sp:origin:{{{host}}}:connections", holder))

    async def _call(self, awaitable):  # type: ignore[no-untyped-def]
        try:
            return await awaitable
        except (RedisError, OSError) as exc:
            raise RedisUnavailable(f"redis unreachable: {exc or type(exc).__name__}") from None
