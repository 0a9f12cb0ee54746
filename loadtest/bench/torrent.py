"""libtorrent (2.1, from PyPI) beside swarmpull in ``benchmarks dataplane``: one seeding
session and one leeching session, in separate processes, over loopback TCP, tuned as a
data centre would tune it (4 MiB socket buffers, deep request queues, no DHT/LSD/UPnP;
loopback peers are in libtorrent's unlimited local class)."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import libtorrent as lt

PIECE = 4 << 20  # as swarmpull's for a 1 GiB blob


def make_torrent(path: Path) -> bytes:
    """A v2 (SHA-256) .torrent of one file, 4 MiB pieces, private (no DHT, no PEX)."""
    creator = lt.create_torrent(lt.list_files(str(path)), PIECE, lt.create_torrent.v2_only)
    creator.set_priv(True)
    lt.set_piece_hashes(creator, str(path.parent))
    return lt.bencode(creator.generate())  # generate_buf() is broken in the 2.1.1 wheel


def settings(port: int) -> dict[str, Any]:
    return {
        "listen_interfaces": f"127.0.0.1:{port}",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "allow_multiple_connections_per_ip": True,
        "alert_mask": lt.alert_category.error | lt.alert_category.status | lt.alert_category.storage,
        "upload_rate_limit": 0,
        "download_rate_limit": 0,
        "unchoke_slots_limit": 16,
        "max_out_request_queue": 1500,
        "max_allowed_in_request_queue": 2000,
        "request_queue_time": 3,
        "send_buffer_watermark": 4 << 20,
        "send_buffer_watermark_factor": 150,
        "send_buffer_low_watermark": 1 << 20,
        "max_queued_disk_bytes": 16 << 20,
        "aio_threads": 4,
        "hashing_threads": 2,
        "send_socket_buffer_size": 4 << 20,
        "recv_socket_buffer_size": 4 << 20,
    }


def _params(torrent: str, directory: str, *, seed: bool) -> Any:
    params = lt.load_torrent_buffer(Path(torrent).read_bytes())
    params.save_path = directory
    params.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
    if seed:
        params.flags |= lt.torrent_flags.seed_mode  # the file is whole: no re-hash
    return params


def seed(torrent: str, directory: str, port: int) -> None:
    """Seed until SIGTERM."""
    session = lt.session(settings(port))
    session.add_torrent(_params(torrent, directory, seed=True))
    print("READY", flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    while not stop:
        session.wait_for_alert(500)
        session.pop_alerts()


def leech(torrent: str, directory: str, seed_port: int) -> dict[str, Any]:
    """Fetch the torrent from the seed; seconds and CPU to finished and flushed."""
    session = lt.session(settings(0))
    times = os.times()
    cpu, started = times.user + times.system, time.perf_counter()
    handle = session.add_torrent(_params(torrent, directory, seed=False))
    handle.connect_peer(("127.0.0.1", seed_port))
    _until(session, lt.torrent_finished_alert, started + 600)
    handle.flush_cache()  # the bytes in the file, as swarmpull's are in its store
    _until(session, lt.cache_flushed_alert, time.perf_counter() + 30)
    seconds = time.perf_counter() - started
    times = os.times()
    used = times.user + times.system - cpu
    path = Path(directory) / handle.status().name
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"seconds": seconds, "cpu": used, "bytes": path.stat().st_size, "sha256": digest}


def _until(session: Any, kind: type, deadline: float) -> None:
    while time.perf_counter() < deadline:
        session.wait_for_alert(200)
        for alert in session.pop_alerts():
            if isinstance(alert, kind):
                return
            if isinstance(alert, lt.torrent_error_alert | lt.file_error_alert):
                raise RuntimeError(alert.message())
    raise TimeoutError(f"no {kind.__name__} in time")
