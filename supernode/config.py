"""The supernode's configuration: one frozen dataclass, defaults in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from supernode.blame import BlameConfig
from supernode.dashboard.auth import check_token
from supernode.origin_limits import OriginLimit
from supernode.scheduler import SchedulerConfig
from swarmpull.core.upstreams import PatternError, UpstreamAllow
from swarmpull.edges.http import HostPort
from swarmpull.edges.origin import UpstreamConfig
from swarmpull.edges.registry import RegistryOptions
from swarmpull.edges.tls import ClusterTls
from swarmpull.edges.torrent import TorrentConfig, Transport


@dataclass(frozen=True, slots=True)
class SupernodeConfig:
    listen: HostPort = field(default_factory=lambda: HostPort("127.0.0.1", 65003))
    """Where the API and the seed's piece server listen."""
    advertise: str | None = None
    """The URL peers use to reach this supernode's piece server (default: from listen)."""
    data_dir: Path | None = None
    """Seed cache directory; None: a temporary directory removed on exit."""
    cache_size: int | None = None
    """Most bytes the seed cache holds (least recently used blobs are evicted); None: no
    cap but the free space (``min_free``)."""
    min_free: float = 0.05
    """Share of the file system the seed cache leaves free, evicting as it must."""
    piece_size: int | None = None
    """Fixed piece size for new tasks; None: the documented rule (swarmpull.core.geometry)."""
    seed_upload_slots: int = 64
    """Concurrent piece uploads the seed serves; more requests wait in line for a slot."""
    node_addresses: str = "source"
    """Where a node's piece server is taken to be: ``source``, at the address its
    registration came from (the port it advertises, the host it connects from: no node
    can point others at a third host); ``advertised``, at the URL it advertises as given
    (nodes behind NAT or a proxy that hides their addresses from the supernode)."""
    seed_copies: int = 2
    """Times the seed sends a piece before it serves it only where fewer live peers hold
    it (``supernode.ration``)."""
    seed_upload_limit: int | None = None
    """Bytes per second the seed serves to peers, all together; None: no limit."""
    upstream_allow: tuple[str, ...] = ()
    """``--upstream-allow`` patterns (``swarmpull.core.upstreams``): the upstreams the
    supernode may read. Empty: any public address, and no loopback, link-local, private,
    shared, unspecified or multicast one."""
    origin_limits: tuple[OriginLimit, ...] = ()
    """Per-upstream caps on connections and bandwidth for back-to-source reads."""
    registry: RegistryOptions = field(default_factory=RegistryOptions)
    """How upstream registries are reached (for the nodes' manifests, and preheat)."""
    tag_ttl: float = 5.0
    """Seconds a tag's resolution stands for the whole cluster before the registry is
    asked again."""
    tag_stale: float = 3600.0
    """Seconds an older resolution still answers while the registry is unavailable
    (unreachable, 429, 5xx), with a warning in the log."""
    auth_cache_ttl: float = 60.0
    """Seconds a node credential's pull rights on a repository stand once the registry
    confirmed them (one HEAD per credential and repository)."""
    manifest_cache: int = 64 << 20
    """Bytes of verified manifests kept in memory (least recently used go first)."""
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
    """Seconds between peer heartbeats, at least (told to peers in every answer)."""
    heartbeat_rate: float = 300.0
    """Heartbeats per second the supernode asks of all peers together: each heartbeats
    every ``peers / heartbeat_rate`` seconds, from heartbeat_interval to heartbeat_max
    (a report counts as a heartbeat). A peer silent for three intervals is dropped."""
    heartbeat_max: float = 30.0
    channel_ping: float = 30.0
    """Seconds between WebSocket pings on a peer's control channel: an open channel is
    the peer's heartbeat, and one that answers no ping within half of this is closed."""
    report_rate: float = 100.0
    """Reports per second the supernode asks of all members of a task together: each
    member reports every ``members / report_rate`` seconds, within report_min..report_max
    (it reports sooner when it needs parents or completes)."""
    report_min: float = 1.0
    report_max: float = 30.0
    failed_task_ttl: float = 30.0
    """Seconds a failed task answers with its error before a new attempt is made."""
    blame: BlameConfig = field(default_factory=BlameConfig)
    """How long a URL that sent bytes not matching a blob's digest stays refused as that
    blob's source (longer than failed_task_ttl), and for how many blobs at most."""
    task_ttl: float = 3600.0
    """Seconds a task nobody opened or reported on is kept in memory (its blob stays in
    the seed cache)."""
    tick_interval: float = 1.0
    """Seconds between scheduler time events (timeouts, expiries)."""
    seed_id: str = "seed"
    """This supernode's id as a piece source."""
    ui_token: str | None = field(default=None, repr=False)
    """The operators' token for the dashboard at /ui/ (every replica the same); None: no
    dashboard."""
    ui_interval: float = 1.0
    """Seconds between two dashboard updates (each costs the same whoever watches)."""
    torrent: TorrentConfig = field(default_factory=lambda: TorrentConfig(transport=Transport.BOTH))
    """The seed's libtorrent session (its listen host defaults to the API's)."""
    tls: ClusterTls | None = None
    """Mutual TLS with the cluster (``--tls-dir``, a supernode certificate; its server
    context must accept clients without a certificate, for health checks and the
    dashboard); None: plain HTTP, anyone may act for any peer (``--insecure-cluster``)."""
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_free < 1.0:
            raise ValueError("min_free is a share of the disk, from 0 to below 1")
        if self.report_rate <= 0 or not 0 < self.report_min <= self.report_max:
            raise ValueError("report_rate must be positive and 0 < report_min <= report_max")
        if self.seed_copies < 1:
            raise ValueError("seed_copies must be at least 1")
        if self.node_addresses not in ("source", "advertised"):
            raise ValueError("node_addresses is source or advertised")
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
        try:
            UpstreamAllow(self.upstream_allow)
        except PatternError as exc:
            raise ValueError(str(exc)) from None
        if self.blame.ttl <= self.failed_task_ttl:
            raise ValueError("blame.ttl must outlast failed_task_ttl")
        if self.ui_token is not None:
            check_token(self.ui_token)
        if self.ui_interval <= 0:
            raise ValueError("ui_interval must be positive")
        if not 0 < self.tag_ttl <= self.tag_stale or self.auth_cache_ttl <= 0:
            raise ValueError("tag_ttl and auth_cache_ttl must be positive, tag_stale at least tag_ttl")
        if self.tls is not None and not self.tls.identity.is_supernode:
            raise ValueError(f"{self.tls.files.directory}: a supernode needs a supernode certificate")
        if self.tls is not None and self.advertise and self.advertise.startswith("http://"):
            raise ValueError(f"with --tls-dir the advertised URL is https://, not {self.advertise!r}")
        if self.channel_ping <= 0:
            raise ValueError("channel_ping must be positive")
        if self.heartbeat_rate <= 0 or self.heartbeat_max < self.heartbeat_interval:
            raise ValueError("heartbeat_rate must be positive and heartbeat_max at least heartbeat_interval")
