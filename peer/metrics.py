"""The peer daemon's counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from swarmpull.edges.transport import TransferCounters


class PeerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.download_bytes = Counter(
            "swarmpull_peer_download_bytes",
            "Bytes received, by kind of source (peer, seed, upstream)",
            ["source"],
            registry=r,
        )
        self.pieces = Counter(
            "swarmpull_peer_pieces",
            "Piece transfers, by outcome (verified, corrupt, failed)",
            ["outcome"],
            registry=r,
        )
        self.blobs = Counter(
            "swarmpull_peer_blobs",
            "Blob downloads ended, by outcome (complete, failed, abandoned: every client left)",
            ["outcome"],
            registry=r,
        )
        self.transfers = TransferCounters(r, "swarmpull_peer")
        self.opens = Counter("swarmpull_peer_task_opens", "Tasks opened at the supernode", registry=r)
        self.scrubbed = Counter(
            "swarmpull_peer_scrubbed_bytes", "Bytes of complete blobs re-verified after a restart", registry=r
        )
        self.fallbacks = Counter(
            "swarmpull_peer_direct_fallbacks",
            "Blobs fetched straight from upstream because no supernode could serve them",
            registry=r,
        )
