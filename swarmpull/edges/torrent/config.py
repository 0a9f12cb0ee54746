"""A libtorrent session's configuration, and the settings pack it becomes.

libtorrent's defaults are made for home users on the Internet: DHT, local discovery,
UPnP, rate limits that do not apply to "local" peers, a request queue sized for slow
links. A data centre is the opposite, and ``session_settings`` says so setting by
setting, each with its reason.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import libtorrent as lt

from swarmpull.edges.http import HostPort


class Transport(enum.Enum):
    """How libtorrent peers connect. ``utp`` is uTP with LEDBAT congestion control: it
    backs off as soon as queueing delay grows, so it yields to TCP traffic on the same
    link (the business traffic); ``tcp`` competes as an equal."""

    TCP = "tcp"
    UTP = "utp"
    BOTH = "both"  # the supernode's seed: it answers whichever its peers speak


@dataclass(frozen=True, slots=True)
class TorrentConfig:
    listen: HostPort | None = None
    """Where the session accepts peers (TCP and uTP on the same port; port 0: any); None:
    the host of the daemon's own listen address, any port."""
    transport: Transport = Transport.UTP
    """uTP (background, yields to TCP) or TCP."""
    upload_limit: int | None = None
    """Bytes per second the session sends, all torrents together; None: no limit."""
    download_limit: int | None = None
    """Bytes per second the session receives; None: no limit."""
    connections: int = 200
    """Most peer connections of the session."""
    unchoke_slots: int = 16
    """Peers uploaded to at once."""
    shared_address: bool = False
    """Several nodes share one IP address (a load test on loopback): allow more than one
    connection per address. Off in production, where a ban by address must stick."""
    disk_threads: int = 4
    """libtorrent's disk I/O threads (1 for the many sessions of a load-test worker)."""
    hash_threads: int = 2
    """libtorrent's SHA-256 threads: every 16 KiB block received is hashed."""
    socket_buffer: int = 4 << 20
    """SO_SNDBUF and SO_RCVBUF of peer sockets; 0: the system's default."""
    utp_target_delay: int = 5
    """Milliseconds of queueing delay uTP (LEDBAT) lets itself add before it backs off."""
    verify_tracker: bool = True
    """Check an https tracker's certificate (against the system's CAs, by host name).
    libtorrent cannot check a cluster certificate (the cluster CA, names of identities),
    so a node of a cluster with mutual TLS turns this off: its announce URL's token
    authenticates it, and what it downloads is checked against the torrent's hashes and
    the supernode's signed statements."""

    def __post_init__(self) -> None:
        for name in ("upload_limit", "download_limit"):
            value = getattr(self, name)
            if value is not None and value < 1024:
                raise ValueError(f"{name} must be at least 1 KiB/s (or none)")
        if self.connections < 2 or self.unchoke_slots < 1:
            raise ValueError("connections must be at least 2 and unchoke_slots at least 1")
        if self.disk_threads < 1 or self.hash_threads < 1:
            raise ValueError("disk_threads and hash_threads must be at least 1")


ALERTS = (
    lt.alert_category.error
    | lt.alert_category.status
    | lt.alert_category.storage
    | lt.alert_category.tracker
    | lt.alert_category.piece_progress  # piece_finished_alert: a download lands piece by piece
)


def session_settings(config: TorrentConfig) -> dict[str, Any]:
    """The settings pack of a session in a data centre."""
    listen = config.listen or HostPort("127.0.0.1", 0)
    host = f"[{listen.host}]" if ":" in listen.host else listen.host
    utp = config.transport is not Transport.TCP
    tcp = config.transport is not Transport.UTP
    settings: dict[str, Any] = {
        # One address, the one given: a node's other interfaces are not for peers.
        "listen_interfaces": f"{host}:{listen.port}",
        # Peers come from the supernode's tracker only: no DHT, no local discovery, no
        # port mapping (the torrents are private too, so peer exchange is off as well).
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "dht_bootstrap_nodes": "",
        # In a data centre every peer is on a "local" network (RFC 1918 addresses,
        # loopback), and libtorrent exempts local peers from rate limits by default:
        # the preheat limit would not hold at all.
        "ignore_limits_on_local_network": False,
        # A limit counts what crosses the wire, headers included, as --upload-limit does.
        "rate_limit_ip_overhead": True,
        "upload_rate_limit": config.upload_limit or 0,
        "download_rate_limit": config.download_limit or 0,
        "allow_multiple_connections_per_ip": config.shared_address,
        "connections_limit": config.connections,
        "unchoke_slots_limit": config.unchoke_slots,
        # Fixed unchoke slots: no upload-rate guessing on links that are all alike; the
        # seed turns round robin, so every leecher gets pieces to pass on and the swarm,
        # not the seed, carries the load.
        "choking_algorithm": 0,
        "seed_choking_algorithm": 0,
        # Enough requests in flight for a fast, short link (10 Gbit/s x 1 ms is ~80
        # blocks); libtorrent's defaults are sized for slow Internet peers.
        "max_out_request_queue": 1500,
        "max_allowed_in_request_queue": 2000,
        "request_queue_time": 3,
        # Socket buffers: uTP on a fast link drops datagrams with the 208 KiB default
        # and crawls (measured ~4.5 MiB/s on loopback); TCP gained 60 % too.
        "send_socket_buffer_size": config.socket_buffer,
        "recv_socket_buffer_size": config.socket_buffer,
        "aio_threads": config.disk_threads,
        "hashing_threads": config.hash_threads,
        # Peers that restart come back within a second, on links with sub-ms latency.
        "peer_connect_timeout": 3,
        "min_reconnect_time": 1,
        "tracker_completion_timeout": 5,
        "tracker_receive_timeout": 5,
        # Shutting down waits at most a second for the tracker to hear "stopped".
        "stop_tracker_timeout": 1,
        "announce_to_all_trackers": True,
        "anonymous_mode": False,
        "user_agent": "swarmpull",
        "alert_mask": ALERTS,
        "alert_queue_size": 10000,
        # A node speaks uTP or TCP, not both: its preheat traffic is one kind or the
        # other. A seed that speaks both shares its upload in proportion to the peers of
        # each kind (libtorrent's default would throttle uTP peers whenever TCP ones exist).
        "enable_outgoing_utp": utp,
        "enable_incoming_utp": utp,
        "enable_outgoing_tcp": tcp,
        "enable_incoming_tcp": tcp,
        "mixed_mode_algorithm": 1,
        "validate_https_trackers": config.verify_tracker,
    }
    # LEDBAT backs off once it sees more queueing delay than its target. libtorrent's
    # 100 ms suits home routers' deep buffers; a data-centre switch port holds a few
    # milliseconds to tens of them, so uTP never sees its target, only losses, and
    # competes like TCP (measured: beside a TCP flow through a 50 ms queue, uTP took 80 %
    # of the link at 100 ms, half at 20 ms and 10 ms, 3 % at 5 ms; benchmarks background).
    settings["utp_target_delay"] = config.utp_target_delay
    if config.transport is Transport.UTP:
        # With large send buffers uTP stalled for a minute (until a request timed out) in
        # about 40 % of 1 GiB loopback runs; libtorrent's own buffer sizes never did.
        settings.update(send_buffer_watermark=512000, send_buffer_low_watermark=10240)
        settings.update(send_buffer_watermark_factor=50)
    else:
        settings.update(send_buffer_watermark=4 << 20, send_buffer_low_watermark=1 << 20)
        settings.update(send_buffer_watermark_factor=150)
    return settings
