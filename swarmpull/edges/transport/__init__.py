"""The piece transport: how one node fetches a piece from another, and serves its own.

The downloader sees only ``PieceTransport`` (one method), so another data plane (a
BitTorrent one, say) can sit beside this HTTP one. The HTTP form:

    GET /pieces/<task_id>/<index>      ->  200 with the piece's bytes (zstd when it pays)
                                           404 when the piece is not held (verified)
                                           429 + Retry-After when every upload slot is busy

Both the supernode (as the seed) and every peer serve pieces with ``PieceServer``.
"""

from swarmpull.edges.transport.client import (
    HttpPieceTransport,
    PieceFetchError,
    PieceTransport,
    TransportConfig,
)
from swarmpull.edges.transport.counters import TransferCounters
from swarmpull.edges.transport.server import PieceServer

__all__ = [
    "HttpPieceTransport",
    "PieceFetchError",
    "PieceServer",
    "PieceTransport",
    "TransferCounters",
    "TransportConfig",
]
