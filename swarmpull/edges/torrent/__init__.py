"""The BitTorrent transport: libtorrent sessions driven from asyncio (``session``), their
data-centre settings (``config``), v2 torrents of single blobs (``metainfo``), and the
bookkeeping of a blob landing in the store piece by piece (``landing``).

libtorrent is a second swarm beside the HTTP one, for preheat and warm blobs: the seam
between the two is the verified blob in the piece store, not a per-piece interface."""

from swarmpull.edges.torrent.config import TorrentConfig, Transport, session_settings
from swarmpull.edges.torrent.landing import Landing
from swarmpull.edges.torrent.metainfo import Metainfo, TorrentError, make_torrent, parse_torrent
from swarmpull.edges.torrent.session import Torrent, TorrentFailed, TorrentSession

__all__ = [
    "Landing",
    "Metainfo",
    "Torrent",
    "TorrentConfig",
    "TorrentError",
    "TorrentFailed",
    "TorrentSession",
    "Transport",
    "make_torrent",
    "parse_torrent",
    "session_settings",
]
