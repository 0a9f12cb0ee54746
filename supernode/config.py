"""The supernode's configuration: one frozen dataclass, defaults in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from supernode.origin_limits import OriginLimit
from supernode.scheduler import SchedulerConfig
from swarmpull.edges.http import HostPort
from swarmpull.edges.origin import UpstreamConfig


@dataclass(frozen=True, slots=True)
class SupernodeConfig:
    listen: HostPort = field(default_factory=lambda: HostPort("127.0.0.1", 65003))
    """Where the API and the seed's piece server listen."""
    advertise: str | None = None
    """The URL peers use to reach this supernode's piece server (default: from listen)."""
    data_dir: Path | None = None
    """Seed cache directory; None: a temporary directory removed on exit."""
    cache_size: int | None = None
    """Most bytes the seed cache holds (least recently used blobs are evicted)."""
    piece_size: int | None = None
    """Fixed piece size for new tasks; None: the documented rule (swarmpull.core.geometry)."""
    seed_upload_slots: int = 16
    """Concurrent piece uploads the seed accepts; peers are preferred whenever they can serve."""
    seed_upload_limit: int | None = None
    """Bytes per second the seed serves to peers, all together; None: no limit."""
    origin_limits: tuple[OriginLimit, ...] = ()
    """Per-upstream caps on connections and bandwidth for back-to-source reads."""
    registry_ca: Path | None = None
    """Extra CA certificates (PEM) trusted for upstream registries."""
    direct_per_task: int = 4
    """Peers allowed to read a task's upstream directly after the supernode failed to."""
    redis_url: str | None = None
    """redis:// or rediss:// URL of the state shared by replicas; None: state in memory."""
    redis_password: str | None = field(default=None, repr=False)
    lease_ttl: float = 5.0
    """Seconds a task's lease outlives its owner's last renewal (with replicas)."""
    stage_limit: int = 256 << 20
    """Bytes of upstream pieces held by no peer yet that a replica keeps in Redis, so a
    successor never reads them again."""
    heartbeat_interval: float = 5.0
    """Seconds between peer heartbeats (told to peers when they register)."""
    long_poll_max: float = 30.0
    """Longest a sync may wait for work before answering empty."""
    failed_task_ttl: float = 30.0
    """Seconds a failed task answers with its error before a new attempt is made."""
    tick_interval: float = 1.0
    """Seconds between scheduler time events (timeouts, expiries)."""
    seed_id: str = "seed"
    """This supernode's id as a piece source."""
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    def __post_init__(self) -> None:
        if self.seed_upload_slots < 1:
            raise ValueError("seed_upload_slots must be at least 1")
        if self.piece_size is not None and self.piece_size < 4096:
            raise ValueError("piece_size must be at least 4 KiB")
        if self.redis_url is not None and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"--redis needs a redis://, rediss:// or unix:// URL, not {self.redis_url!r}")
        if self.lease_ttl < 3 * self.tick_interval:
            raise ValueError("lease_ttl must be at least three tick intervals")
        if self.heartbeat_interval * 2 >= self.scheduler.peer_timeout:
            raise ValueError("peer_timeout must exceed two heartbeat intervals")
