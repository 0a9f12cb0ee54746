"""Types of the scheduler: its configuration, the events' payloads and its answers."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from swarmpull.core.failures import FailureReason


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """Tuning of the parent scheduler; every time is in seconds of the clock passed in."""

    parents: int = 4
    """Peer parents a requester gets (the seed comes on top while it has room)."""
    candidates: int = 16
    """Sources sampled and scored per choice (all of them when there are fewer)."""
    children_per_parent: float = 1.5
    """A source takes up to ``children_per_parent * parents`` children per task at the
    swarm's typical upload rate, more or fewer in proportion to its own rate."""
    seed_children: int = 64
    """Most children the seed of a task takes at once (it is the source of last resort;
    its own rate caps what it serves anyway)."""
    peer_timeout: float = 30.0
    """A peer not heard from (heartbeat or report) for this long is dropped."""
    blacklist_seconds: float = 60.0
    """A parent a requester dropped is not given back to that requester for this long."""
    quarantine_seconds: float = 3600.0
    """A source proven to serve corrupt pieces is not given to anyone for this long."""
    corrupt_witnesses: int = 2
    """Distinct requesters that must report corrupt pieces from a source to quarantine it
    (or the supernode's own check of one of them)."""
    failure_witnesses: int = 2
    """Distinct requesters that must report a source unreachable or stalled within
    ``blacklist_seconds`` before it is dropped (or degraded)."""
    degraded_seconds: float = 30.0
    """A source found far slower than its peers is not given as a parent this long."""
    default_capacity: float = 100e6
    """Upload bytes per second assumed for a peer that declares none."""

    def __post_init__(self) -> None:
        for name in ("parents", "candidates", "seed_children", "corrupt_witnesses", "failure_witnesses"):
            if getattr(self, name) < 1:
                raise ValueError(f"SchedulerConfig.{name} must be at least 1")
        for name in ("peer_timeout", "blacklist_seconds", "children_per_parent"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SchedulerConfig.{name} must be positive")


class SourceState(enum.Enum):
    ACTIVE = "active"
    DEGRADED = "degraded"  # far slower than its peers: given to no new child for a while
    QUARANTINED = "quarantined"  # proven to serve corrupt pieces: given to no one


@dataclass(frozen=True, slots=True)
class ParentReport:
    """What a requester saw of one of its parents since its last report: bytes received
    in ``seconds`` of transfer time, transfers that failed, and the last failure's reason."""

    parent: str
    bytes: int = 0
    seconds: float = 0.0
    failures: int = 0
    reason: FailureReason | None = None


@dataclass(frozen=True, slots=True)
class Parent:
    """A source a requester fetches from (a peer, or the task's seed)."""

    id: str
    seed: bool = False


@dataclass(slots=True)
class Events:
    """What an event did besides answering its caller: peers dropped, quarantined or
    degraded (for the log and the metrics)."""

    dropped: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)

    def merge(self, other: Events) -> Events:
        self.dropped.extend(other.dropped)
        self.quarantined.extend(other.quarantined)
        self.degraded.extend(other.degraded)
        return self


class UnknownPeer(KeyError):
    """The peer is not registered (never was, timed out, or was dropped)."""


class UnknownTask(KeyError):
    """The task is not known to the scheduler."""
