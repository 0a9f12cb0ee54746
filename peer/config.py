"""The peer daemon's configuration: one frozen dataclass, defaults in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from peer.policy_config import PolicyConfig
from swarmpull.edges.http import HostPort
from swarmpull.edges.origin import UpstreamConfig
from swarmpull.edges.tls import ClusterTls
from swarmpull.edges.torrent import TorrentConfig
from swarmpull.edges.transport import TransportConfig

DEFAULT_API = HostPort("127.0.0.1", 65000)
DEFAULT_UPLOAD_LIMIT = 100 * 1000**2  # 100 MB/s (800 Mbit/s)
DEFAULT_DOWNLOAD_LIMIT = 200 * 1000**2  # 200 MB/s (1.6 Gbit/s)
# The daemon's and the simulator's defaults. As many upload slots as download slots: with
# fewer, a parent's slots fill with transfers each held back by its child's link (shared
# with the child's other transfers) and its upload idles while requests wait in line.
# Simulated (`--trace`), 300 nodes x 1 GiB in 8 layers at 1 Gbit/s: 8 upload slots were
# taken 7.7-7.9 of 8 on average while the uploads used 80-84 % of the links (p99 1.26x
# the bound; 1.13x with 16: docs/BENCHMARKS.md).
UPLOAD_SLOTS = 16
DOWNLOAD_SLOTS = 16


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
    min_free: float = 0.05
    """Share of the file system the piece store leaves free, evicting as it must."""
    scrub_rate: int | None = 50 * 1000**2
    """Bytes per second at which complete blobs are re-verified after a restart (None:
    only when read); a piece is always checked before it is read or served."""
    upload_slots: int = UPLOAD_SLOTS
    """Concurrent uploads this peer serves; as many more wait in line for a slot, and one
    more is refused at once (429, retry hint)."""
    download_slots: int = DOWNLOAD_SLOTS
    """Concurrent piece downloads, all blobs together."""
    upload_limit: int | None = DEFAULT_UPLOAD_LIMIT
    """Upload bytes per second to other peers (on the wire); None: no limit."""
    download_limit: int | None = DEFAULT_DOWNLOAD_LIMIT
    """Download bytes per second from peers and seeds (on the wire); None: no limit."""
    max_direct: int = 2
    """Blobs this node reads straight from their upstream at once (fallbacks)."""
    direct_jitter: float = 2.0
    """Most seconds a node waits, at random, before falling back to the upstream when no
    supernode answers, so a supernode outage does not send every node at once."""
    request_timeout: float = 10.0
    """Seconds for a supernode call (a long poll gets its wait on top)."""
    open_timeout: float = 120.0
    """Seconds to wait for the supernode to open a task (it reads the upstream first)."""
    fallback_grace: float = 10.0
    """Seconds the supernodes may stay unreachable, with the swarm giving nothing either,
    before a download goes to the upstream directly."""
    peer_id: str | None = None
    """Identity in the swarm; default: generated once and kept in data_dir."""
    registry_ca: Path | None = None
    """Extra CA certificates (PEM) trusted for upstreams, when fetching directly."""
    torrent: TorrentConfig | None = field(default_factory=TorrentConfig)
    """The node's libtorrent session (preheat; warm blobs with ``blob_transport``);
    None: no BitTorrent on this node."""
    preheat_limit: int | None = DEFAULT_UPLOAD_LIMIT // 4
    """Bytes per second preheat traffic uses at most, each way; None: no cap."""
    blob_transport: str = "http"
    """How pulls fetch a blob the seed holds whole: ``http`` (the scheduled swarm) or
    ``bittorrent`` (libtorrent, and the HTTP swarm when no torrent is offered)."""
    preheat: bool = True
    """Take part in preheats (with a supernode and BitTorrent)."""
    tls: ClusterTls | None = None
    """Mutual TLS with the cluster (``--tls-dir``, a node certificate): the peer id is
    the certificate's name, the supernodes and every source are ``https://`` and must
    prove who they are, the piece server serves only cluster certificates. None: plain
    HTTP (``--insecure-cluster``)."""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)

    def __post_init__(self) -> None:
        if self.upload_slots < 0 or self.download_slots < 1:
            raise ValueError("upload_slots must be >= 0 and download_slots >= 1")
        for name in ("upload_limit", "download_limit"):
            value = getattr(self, name)
            if value is not None and value < 1024:
                raise ValueError(f"{name} must be at least 1 KiB/s (or none)")
        if self.max_direct < 1:
            raise ValueError("max_direct must be at least 1")
        if not 0.0 <= self.min_free < 1.0:
            raise ValueError("min_free is a share of the disk, from 0 to below 1")
        if self.blob_transport not in ("http", "bittorrent"):
            raise ValueError("blob_transport is http or bittorrent")
        if self.preheat_limit is not None and self.preheat_limit < 1024:
            raise ValueError("preheat_limit must be at least 1 KiB/s (or none)")
        if self.cache_size is not None and self.cache_size <= 0:
            raise ValueError("cache_size must be positive")
        if self.tls is not None:
            self._check_tls(self.tls)

    def _check_tls(self, tls: ClusterTls) -> None:
        name = tls.identity.name
        if tls.identity.is_supernode:
            raise ValueError(f"{tls.files.directory}: a node needs a node certificate, not a supernode's")
        if self.peer_id is not None and self.peer_id != name:
            raise ValueError(
                f"--peer-id {self.peer_id} is not the name of the certificate in {tls.files.directory} "
                f"({name}): with --tls-dir the peer id is the certificate's"
            )
        plain = [url for url in self.supernodes if not url.startswith("https://")]
        if plain:
            raise ValueError(f"with --tls-dir supernodes are https:// URLs, not {plain[0]}")
        if self.advertise and self.advertise.startswith("http://"):
            raise ValueError(f"with --tls-dir the advertised URL is https://, not {self.advertise!r}")

    @property
    def node_id(self) -> str | None:
        """The peer id this config fixes: the certificate's name, or ``peer_id``."""
        return self.tls.identity.name if self.tls is not None else self.peer_id
