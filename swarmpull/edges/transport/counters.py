"""Counters of piece traffic, the same for a peer and for the supernode's seed."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class TransferCounters:
    """Wire bytes by direction and source, refusals, limiter waits, compression savings."""

    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self.upload_bytes = Counter(
            f"{prefix}_upload_bytes", "Bytes of pieces sent to other nodes (on the wire)", registry=registry
        )
        self.download_wire_bytes = Counter(
            f"{prefix}_download_wire_bytes",
            "Bytes of pieces received (on the wire), by kind of source",
            ["source"],
            registry=registry,
        )
        self.refused = Counter(
            f"{prefix}_upload_refused",
            "Piece requests refused because every upload slot was busy",
            registry=registry,
        )
        self.saved = Counter(
            f"{prefix}_compression_saved_bytes",
            "Bytes zstd kept off the wire, by direction",
            ["direction"],
            registry=registry,
        )
        self.limiter_wait = Counter(
            f"{prefix}_limiter_wait_seconds",
            "Seconds transfers waited for the rate limiter, by direction",
            ["direction"],
            registry=registry,
        )
