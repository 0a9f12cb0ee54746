"""The supernode side of a surge: one supernode with its state in memory, or replicas
sharing a real ``redis-server``; each a child process (``python -m swarmpull supernode``)
that a fault run can kill like a crash.

Besides starting and stopping them, it answers what the report asks: CPU seconds, calls
answered and what the seed sent (summed over replicas; a killed replica's CPU is read just
before it dies, what it answered and sent dies with it),
piece failures peers reported by reason, and which peers each replica quarantined,
degraded or dropped (from its log: the supernode logs each such decision).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from loadtest.services import RedisServer, cpu_seconds, free_port, until_ready

_DECISION = re.compile(r"peer (\S+) (quarantined|degraded|dropped)")


@dataclass(slots=True)
class _Replica:
    url: str
    log: Path
    process: asyncio.subprocess.Process
    cpu: float = 0.0  # CPU seconds read when it was killed
    killed: bool = False


@dataclass(slots=True)
class ControlPlane:
    """``await start()``, peers use ``urls``; ``await stop()`` (safe twice)."""

    root: Path
    args: list[str]
    """Options every replica gets (piece size, seed limit)."""
    replicas: int = 0
    """0: one supernode, state in memory; N: N replicas on a real redis-server."""
    lease_ttl: float = 3.0
    """With replicas: how long a dead owner's lease outlives it."""
    events: Path | None = None
    """A directory for the replicas' swarm events (``supernode.jsonl``, ``supernode-1.jsonl``...)."""
    tls_root: Path | None = None
    """TLS directories ``sn<i>``, one per replica (mutual TLS); None: plain HTTP."""
    _replicas: list[_Replica] = field(default_factory=list)
    _redis: RedisServer | None = None

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self._replicas]

    async def start(self) -> None:
        try:
            extra: list[str] = []
            if self.replicas:
                self._redis = RedisServer(self.root / "redis")
                await self._redis.start()
                extra = ["--redis", self._redis.url, "--lease-ttl", f"{self.lease_ttl:g}"]
            count = max(1, self.replicas)
            self._replicas = await asyncio.gather(
                *(
                    self._start_on_a_free_port(
                        self.root / f"supernode{i}", [*extra, *self._events_args(i), *self._tls_args(i)]
                    )
                    for i in range(count)
                )
            )
        except BaseException:
            await self.stop()
            raise

    def _tls_args(self, replica: int) -> list[str]:
        if self.tls_root is None:
            return ["--insecure-cluster"]
        return ["--tls-dir", str(self.tls_root / f"sn{replica}")]

    def _events_args(self, replica: int) -> list[str]:
        if self.events is None:
            return []
        name = "supernode.jsonl" if replica == 0 else f"supernode-{replica}.jsonl"
        return ["--events", str(self.events / name)]

    async def _start_on_a_free_port(self, data_dir: Path, extra: list[str]) -> _Replica:
        """A free port may be taken by another process before the supernode binds it (the
        machine is shared): then try another."""
        for _ in range(2):
            try:
                return await self._start_one(data_dir, extra)
            except RuntimeError as exc:
                if "Address already in use" not in str(exc):
                    raise
        return await self._start_one(data_dir, extra)

    async def _start_one(self, data_dir: Path, extra: list[str]) -> _Replica:
        port = free_port()
        data_dir.mkdir(parents=True, exist_ok=True)
        log = data_dir / "supernode.log"
        url = f"{'https' if self.tls_root else 'http'}://127.0.0.1:{port}"
        args = ["--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir), *self.args, *extra]
        with open(log, "wb") as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "swarmpull", "supernode", *args,
                stdout=asyncio.subprocess.DEVNULL, stderr=out,
            )  # fmt: skip
        replica = _Replica(url, log, process)
        async with aiohttp.ClientSession() as session:

            async def healthy() -> bool:
                async with session.get(f"{url}/healthz", ssl=False) as resp:  # open to anyone
                    return resp.status == 200

            try:
                await until_ready(healthy, 20.0, "the supernode did not start", process)
            except (RuntimeError, TimeoutError) as exc:
                lines = log.read_text(errors="replace").strip().splitlines()
                await self._end(replica)
                raise RuntimeError(f"{exc}: {lines[-1] if lines else 'no output'}") from None
        return replica

    async def stop(self) -> None:
        for replica in self._replicas:
            await self._end(replica)
        if self._redis is not None:
            await self._redis.stop()

    async def _end(self, replica: _Replica) -> None:
        process = replica.process
        if process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()

    # ---------------------------------------------------------------- faults

    async def kill_owner(self, task_ids: list[str], wait: float = 10.0) -> str:
        """SIGKILL the replica that owns most of ``task_ids`` (their leases in Redis), as
        soon as one is owned (within ``wait`` seconds); returns what it did."""
        if self._redis is None or len(self._replicas) < 2:
            raise RuntimeError("killing the owner needs replicas on Redis")
        owners: Counter[str] = Counter()
        client = aioredis.Redis.from_url(self._redis.url)
        try:
            for _ in range(max(1, int(wait / 0.05))):
                for task_id in task_ids:
                    with contextlib.suppress(RedisError):
                        lease = await client.get(f"sp:{{{task_id}}}:lease")
                        if lease:
                            owners[lease.decode().split(" ", 1)[-1]] += 1
                if owners:
                    break
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()
        if not owners:
            return "no task had an owner: no replica killed"
        url, owned = owners.most_common(1)[0]
        replica = next((r for r in self._replicas if r.url == url and not r.killed), None)
        if replica is None:
            return f"the owner {url} is not one of ours: no replica killed"
        with contextlib.suppress(OSError, ValueError, IndexError):
            replica.cpu = cpu_seconds(replica.process.pid)
        replica.process.send_signal(signal.SIGKILL)
        await replica.process.wait()
        replica.killed = True
        return f"supernode {url} (owner of {owned} of {len(task_ids)} tasks) killed"

    async def restart_redis(self) -> str:
        """SIGKILL redis-server and start it again on its port and data (its AOF is
        synced on every write, as a careful operator runs it)."""
        redis = self._redis
        if redis is None or redis.process is None:
            raise RuntimeError("restarting Redis needs replicas on Redis")
        redis.process.send_signal(signal.SIGKILL)
        await redis.process.wait()
        await redis.start()
        return "redis-server killed and started again"

    # ---------------------------------------------------------------- figures

    async def stats(self) -> dict[str, float]:
        """CPU seconds, calls answered and the seed's egress (pieces over HTTP and over
        BitTorrent), summed over replicas."""
        cpu, calls, seed = 0.0, 0, 0.0
        async with aiohttp.ClientSession() as session:
            for replica in self._replicas:
                if replica.killed:
                    cpu += replica.cpu
                    continue
                with contextlib.suppress(OSError, ValueError, IndexError):
                    cpu += cpu_seconds(replica.process.pid)
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{replica.url}/metrics", ssl=False) as resp:
                        text = await resp.text()
                    calls += int(_metric_sum(text, "swarmpull_supernode_calls_total"))
                    seed += _metric_sum(text, "swarmpull_supernode_seed_upload_bytes_total")
                    seed += _metric_sum(text, "swarmpull_supernode_torrent_upload_bytes")
        return {"supernode CPU s": cpu, "supernode calls": calls, "seed egress bytes": seed}

    async def failures(self) -> dict[str, int]:
        """Piece failures peers reported, by reason (live replicas)."""
        out: Counter[str] = Counter()
        async with aiohttp.ClientSession() as session:
            for replica in self._replicas:
                if replica.killed:
                    continue
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{replica.url}/metrics", ssl=False) as resp:
                        text = await resp.text()
                    for line in text.splitlines():
                        if line.startswith("swarmpull_supernode_piece_failures_total{"):
                            reason = line.split('reason="', 1)[1].split('"', 1)[0]
                            out[reason] += int(float(line.split()[-1]))
        return dict(out)

    def decisions(self) -> dict[str, set[str]]:
        """Peer -> what any replica decided about it: quarantined, degraded, dropped."""
        out: dict[str, set[str]] = {}
        for replica in self._replicas:
            with contextlib.suppress(OSError):
                for match in _DECISION.finditer(replica.log.read_text(errors="replace")):
                    out.setdefault(match.group(1), set()).add(match.group(2))
        return out


def _metric_sum(text: str, name: str) -> float:
    """The sum of ``name``'s samples, with labels or without."""
    return sum(
        float(line.split()[-1]) for line in text.splitlines() if line.startswith((name + "{", name + " "))
    )
