"""What a simulated surge is: the image, the links, the supernode's costs, the faults."""

from __future__ import annotations

from dataclasses import dataclass, field

from peer.config import DOWNLOAD_SLOTS, UPLOAD_SLOTS
from peer.policy_config import PolicyConfig
from supernode.config import SupernodeConfig
from supernode.scheduler import SchedulerConfig

# Seconds of supernode CPU per call, by kind, and per task beyond a call's first
# (``KIND_task``): at or above what `swarmpull benchmarks supernode` measures with one
# task and with eight (docs/BENCHMARKS.md) on the 2-core machine.
DEFAULT_SERVICE = {"open": 0.0004, "report": 0.0003, "open_task": 0.00015, "report_task": 0.0001}


@dataclass(frozen=True, slots=True)
class SimConfig:
    nodes: int = 1000
    image_size: int = 64 << 20
    layers: int = 1
    """The image's layers: one task each, pulled side by side."""
    piece_size: int | None = None
    """None: the supernode's rule (swarmpull.geometry), per layer."""
    node_up: float = 12.5e6
    """Upload bytes per second of a node."""
    node_down: float = 12.5e6
    """Download bytes per second of a node."""
    registry_rate: float = 25e6
    """Bytes per second the registry sends (the supernode's single read of each layer)."""
    seed_up: float | None = None
    """The seed's upload; None: the registry's rate."""
    rtt: float = 0.0005
    """Network round trip, for every call and every transfer."""
    service: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SERVICE))
    """Supernode CPU seconds per call (open, report) and per task beyond a call's first
    (open_task, report_task)."""
    owners: int = 1
    """Supernode replicas owning tasks (a task's calls queue at its owner)."""
    supernode: SupernodeConfig = field(default_factory=SupernodeConfig)
    """How often the supernode asks for reports (``report_rate`` ...), as in production."""
    upload_slots: int = UPLOAD_SLOTS
    """Uploads a node serves at once; as many more wait in line, one more is refused busy
    (the daemon's piece server)."""
    download_slots: int = DOWNLOAD_SLOTS
    """Transfers a node runs at once, all layers together (the daemon's download slots)."""
    seed_slots: int = 64
    """Uploads the seed serves at once."""
    network: str = "exact"
    """exact: flows repriced at both ends of every start and end; fast: a flow keeps the
    rate it started with (for 100k nodes)."""
    join_window: float = 0.0
    """Nodes join at uniform random times in [0, join_window]."""
    fail_fraction: float = 0.0
    """This share of the nodes fails at a uniform random time in [0, fail_window]."""
    fail_window: float = 10.0
    slow_fraction: float = 0.0
    """This share of the nodes has links slow_factor times the others'."""
    slow_factor: float = 0.25
    seed: int = 1
    timeout: float = 3600.0
    """Simulated seconds before the run stops; nodes not done count as failed."""
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.image_size < self.layers or self.layers < 1:
            raise ValueError("a simulation needs at least one node, one layer and a byte per layer")
        if min(self.node_up, self.node_down, self.registry_rate) <= 0:
            raise ValueError("link rates must be positive")
        for name in ("fail_fraction", "slow_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.network not in ("exact", "fast"):
            raise ValueError("network is exact or fast")
        unknown = set(self.service) - set(DEFAULT_SERVICE)
        if unknown:
            raise ValueError(f"unknown kinds of supernode call: {', '.join(sorted(unknown))}")

    @property
    def seed_rate(self) -> float:
        return self.seed_up if self.seed_up is not None else self.registry_rate

    def layer_sizes(self) -> list[int]:
        base = self.image_size // self.layers
        return [base] * (self.layers - 1) + [self.image_size - base * (self.layers - 1)]
