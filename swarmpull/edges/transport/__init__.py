"""The piece transport: how one node fetches pieces (and maps of them) from another, and
serves its own. Both the supernode (as the seed) and every peer serve with
``PieceServer``; peers fetch with ``PieceClient`` (see ``server`` for the HTTP form)."""

from swarmpull.edges.transport.client import Fetched, PieceClient, PieceFetchError, TransportConfig
from swarmpull.edges.transport.counters import TransferCounters
from swarmpull.edges.transport.server import MAP_HEADER, PieceServer, Ration

__all__ = [
    "MAP_HEADER",
    "Fetched",
    "PieceClient",
    "PieceFetchError",
    "PieceServer",
    "Ration",
    "TransferCounters",
    "TransportConfig",
]
