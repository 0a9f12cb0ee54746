"""Supernode replicas sharing task state through Redis (``ClusterState``).

Each task is owned by one replica at a time through a lease; the owner keeps the task's
scheduling state in memory (the hot path never waits for Redis) and writes through, in
one fenced script call per task, what a successor needs: the geometry, each piece's
sha256, the pieces read from upstream that no peer holds yet (their bytes, so a
successor never reads them again; written as soon as they are verified), which peers
hold which pieces, and the keys the owners signed piece statements with.

Key layout. Every key of a task carries the hash tag ``{T}``, so on a Redis Cluster a
task's keys share a slot and each script touches one slot:

    sp:{T}:lease   "EPOCH URL", expires after lease_ttl: the owner and its fencing epoch
    sp:{T}:epoch   bumped by every acquisition
    sp:{T}:meta    hash: size, piece_size, digest
    sp:{T}:sha     hash: piece -> sha256 hex of every piece read from upstream
    sp:{T}:staged  hash: piece -> bytes, read from upstream and held by no peer yet
    sp:{T}:have    hash: peer -> the pieces it holds (base64 bitfield), as last reported
    sp:{T}:keys    set: the public keys (base64) owners signed piece statements with
    sp:{T}:inbox   list: events other replicas pass to the owner (JSON)
    sp:peer:{P}    a peer's registration (JSON), readable by every replica
    sp:seen        sorted set: peer -> wall-clock time of its last heartbeat anywhere
    sp:ui:view:{R} replica R's dashboard view (JSON), expires after a few ticks
    sp:ui:replicas sorted set: replica -> wall-clock time of its last dashboard view
    sp:ui:watching set while a dashboard page is open at some replica

The origin limits shared by every replica live under sp:origin:{H} (``origin_limits``).

A write is applied only while the writer's lease is still the current one (the script
compares it first), so a replica that lost its lease cannot write any more.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from supernode.cluster import Batch, ClusterUnavailable, Lease, NotOwner, TaskRecord
from supernode.origin_limits import OriginLimits

log = logging.getLogger(__name__)

DATA_TTL_MS = 7 * 24 * 3600 * 1000  # task keys outlive any rollout, then clean themselves up
PEER_TTL_S = 24 * 3600
INBOX_TTL_MS = 600_000  # an owner takes its inbox every tick; events older than this are stale
INBOX_LENGTH = 10_000  # events an inbox keeps (the newest), as many as the owner takes at once
MAX_ARGS = 2000  # arguments per command inside a script call (Lua's unpack limit is ~8000)
POOL = 64  # connections to Redis at most; more commands at once wait for one
POOL_WAIT = 5.0  # seconds a command waits for a connection (then ClusterUnavailable)

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

# Connections to an upstream shared by every replica: KEYS[1] sorted set of holders by

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_LEASE, _META, _SHA, _STAGED, _HAVE, _KEYS = 1, 2, 3, 4, 5, 6  # KEYS indexes in the fenced script


def task_keys(task_id: str) -> list[str]:
    tag = f"sp:{{{task_id}}}"
    return [f"{tag}:lease", f"{tag}:meta", f"{tag}:sha", f"{tag}:staged", f"{tag}:have", f"{tag}:keys"]


def _inbox(task_id: str) -> str:
    return f"sp:{{{task_id}}}:inbox"


def batch_args(batch: Batch) -> list[Any]:
    """The fenced script's commands for one batch."""
    out: list[Any] = []

    def command(name: str, key: int, values: list[Any]) -> None:
        for start in range(0, len(values), MAX_ARGS):
            chunk = values[start : start + MAX_ARGS]
            out.extend([len(chunk) + 2, name, key, *chunk])

    data_keys = (_META, _SHA, _STAGED, _HAVE, _KEYS)
    if batch.reset:
        out.extend(x for key in data_keys for x in (2, "DEL", key))
    if batch.meta:
        command("HSET", _META, [x for kv in batch.meta.items() for x in kv])
    if batch.sha:
        command("HSET", _SHA, [x for kv in batch.sha.items() for x in kv])
    if batch.staged:
        command("HSET", _STAGED, [x for kv in batch.staged.items() for x in kv])
    if batch.unstaged:
        command("HDEL", _STAGED, sorted(batch.unstaged))
    held = [x for peer, have in batch.holders.items() if have is not None for x in (peer, have)]
    if held:
        command("HSET", _HAVE, held)
    gone = [peer for peer, have in batch.holders.items() if have is None]
    if gone:
        command("HDEL", _HAVE, gone)
    if batch.keys:
        command("SADD", _KEYS, sorted(batch.keys))
    if out:
        for key in data_keys:
            out.extend([3, "PEXPIRE", key, DATA_TTL_MS])
    return out


class RedisCluster:
    """``ClusterState`` on Redis: leases, task records, peers, inboxes. Every method
    raises ClusterUnavailable when Redis does not answer; none retries."""

    shared = True

    def __init__(
        self,
        client: aioredis.Redis,
        url: str,
        lease_ttl: float,
        monotonic: Callable[[], float],
        origins: OriginLimits,
    ) -> None:
        self.url = url
        self.origins = origins
        self.lease_ttl = lease_ttl
        self._client = client
        self._monotonic = monotonic
        self._acquire = client.register_script(_ACQUIRE)
        self._fenced = client.register_script(_FENCED)
        self._release = client.register_script(_RELEASE)

    @staticmethod
    def client(redis_url: str, password: str | None) -> aioredis.Redis:
        """A client whose commands wait their turn for one of ``POOL`` connections: a
        burst of calls (a surge's opens) past redis-py's default pool of 100 connections,
        which does not wait, failed with "Too many connections"."""
        pool = aioredis.BlockingConnectionPool.from_url(
            redis_url,
            password=password,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            health_check_interval=10,
            max_connections=POOL,
            timeout=POOL_WAIT,
        )
        return aioredis.Redis.from_pool(pool)

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
                    keys=task_keys(task_id), args=[lease.token, ttl_ms, *batch_args(batch)], client=pipe
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
        _, meta_key, sha_key, staged_key, have_key, keys_key = task_keys(task_id)
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.hgetall(meta_key).hgetall(sha_key).hgetall(staged_key).hgetall(have_key).smembers(keys_key)
            meta, sha, staged, have, keys = await self._call(pipe.execute())
        if not meta:
            return None
        digest = meta.get(b"digest")
        return TaskRecord(
            int(meta[b"size"]),
            int(meta[b"piece_size"]),
            digest.decode() if digest else None,
            {int(p): s.decode() for p, s in sha.items()},
            {int(p): bytes(b) for p, b in staged.items()},
            {p.decode(): h.decode() for p, h in have.items()},
            sorted(k.decode() for k in keys),
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
        """Pass events (a peer's holdings, a dropped blob) to the owners of their tasks:
        only tasks a replica owns now (anyone can name a task: an inbox nobody takes would
        be a key left for the inbox's lifetime), each inbox kept short and for minutes."""
        if not events:
            return
        task_ids = list(dict.fromkeys(task_id for task_id, _ in events))
        async with self._client.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.exists(task_keys(task_id)[0])
            owned = {t for t, held in zip(task_ids, await self._call(pipe.execute()), strict=True) if held}
        inboxes: dict[str, dict[str, None]] = {}  # task -> its events, each once, in order
        for task_id, event in events:
            if task_id in owned:
                inboxes.setdefault(task_id, {})[json.dumps(event, sort_keys=True)] = None
        async with self._client.pipeline(transaction=False) as pipe:
            for task_id, encoded in inboxes.items():  # three commands a task, however many events
                inbox = _inbox(task_id)
                pipe.rpush(inbox, *list(encoded)[-INBOX_LENGTH:]).ltrim(inbox, -INBOX_LENGTH, -1)
                pipe.pexpire(inbox, INBOX_TTL_MS)
            await self._call(pipe.execute())

    async def take_inbox(self, task_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        if not task_ids:
            return {}
        async with self._client.pipeline(transaction=False) as pipe:
            for task_id in task_ids:  # one key per command: fine on a cluster
                pipe.lpop(_inbox(task_id), 10_000)
            results = await self._call(pipe.execute())
        return {t: [json.loads(e) for e in r] for t, r in zip(task_ids, results, strict=True) if r}

    async def exchange_views(self, view: bytes, watching: bool, ttl: float) -> tuple[list[bytes], bool]:
        """Two round trips a tick per replica, however many pages are open."""
        now, ttl_ms = time.time(), int(ttl * 1000)
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.set(f"sp:ui:view:{self.url}", view, px=ttl_ms)
            pipe.zadd("sp:ui:replicas", {self.url: now})
            pipe.zremrangebyscore("sp:ui:replicas", "-inf", now - ttl)
            if watching:
                pipe.set("sp:ui:watching", b"1", px=ttl_ms)
            pipe.zrange("sp:ui:replicas", 0, -1)
            pipe.exists("sp:ui:watching")
            results = await self._call(pipe.execute())
        replicas = [r.decode() for r in results[-2]]
        views = await self._call(self._client.mget([f"sp:ui:view:{r}" for r in replicas]))
        return [v for v in views if v], bool(results[-1])

    async def _call(self, awaitable):  # type: ignore[no-untyped-def]
        try:
            return await awaitable
        except (RedisError, OSError) as exc:
            raise ClusterUnavailable(f"redis unreachable: {exc or type(exc).__name__}") from None
