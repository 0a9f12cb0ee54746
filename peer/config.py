"""The peer daemon's configuration: one frozen dataclass, defaults in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from swarmpull.http import HostPort
from swarmpull.transport import TransportConfig
from swarmpull.upstream import UpstreamConfig

DEFAULT_API = HostPort("127.0.0.1", 65000)


@dataclass(frozen=True, slots=True)
class PeerConfig:
    data_dir: Path
    """Piece store and the peer's identity live here."""
    supernodes: tuple[str, ...] = ()
    """Supernode URLs, tried in turn; none: every blob is fetched directly from upstream."""
    listen: HostPort | None = None
    """Where other peers fetch pieces from this one; None: download only, never serve."""
    advertise: str | None = None
    """The URL other peers use to reach the piece server (default: from listen)."""
    api_listen: HostPort | None = DEFAULT_API
    """The local API (loopback only: it fetches any URL it is given); None: no API."""
    zone: str | None = None
    """Topology labels: the scheduler prefers sources in the same rack, then zone."""
    rack: str | None = None
    cache_size: int | None = 20 * 1000**3
    """Most bytes the piece store holds; least recently used blobs are evicted."""
    upload_slots: int = 8
    """Concurrent uploads this peer offers to the swarm."""
    download_slots: int = 8
    """Concurrent piece downloads per blob."""
    long_poll: float = 15.0
    """Seconds a sync may wait at the supernode when this peer has nothing in flight."""
    poll_interval: float = 1.0
    """Seconds between syncs while transfers are in flight and none completes."""
    request_timeout: float = 10.0
    """Seconds for a supernode call (a long poll gets its wait on top)."""
    open_timeout: float = 120.0
    """Seconds to wait for the supernode to open a task (it reads the upstream first)."""
    fallback_grace: float = 10.0
    """Seconds the supernodes may stay unreachable mid-download before going direct."""
    peer_id: str | None = None
    """Identity in the swarm; default: generated once and kept in data_dir."""
    transport: TransportConfig = field(default_factory=TransportConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)

    def __post_init__(self) -> None:
        if self.upload_slots < 0 or self.download_slots < 1:
            raise ValueError("upload_slots must be >= 0 and download_slots >= 1")
        if self.cache_size is not None and self.cache_size <= 0:
            raise ValueError("cache_size must be positive")
