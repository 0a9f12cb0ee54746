"""The supernode's counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from swarmpull.edges.transport import TransferCounters


class SupernodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.upstream_bytes = Counter(
            "swarmpull_supernode_upstream_bytes", "Bytes read from upstreams", registry=r
        )
        self.parents = Counter(
            "swarmpull_supernode_parents", "Parents named in answers to opens and reports", registry=r
        )
        self.reports = Counter("swarmpull_supernode_reports", "Task reports answered", registry=r)
        self.calls = Counter("swarmpull_supernode_calls", "API calls answered, by kind", ["kind"], registry=r)
        self.failures = Counter(
            "swarmpull_supernode_piece_failures",
            "Piece failures reported by peers, by reason",
            ["reason"],
            registry=r,
        )
        self.checks = Counter(
            "swarmpull_supernode_source_checks",
            "The supernode's own checks of sources accused of corruption, by verdict",
            ["verdict"],
            registry=r,
        )
        self.tasks = Counter("swarmpull_supernode_tasks", "Tasks ended, by outcome", ["outcome"], registry=r)
        self.peers = Gauge("swarmpull_supernode_peers", "Registered peers", registry=r)
        self.transfers = TransferCounters(r, "swarmpull_supernode_seed")
