"""Types of the scheduler: its configuration, the events' payloads and its decisions."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from swarmpull.core.failures import FailureReason


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """Tuning of the scheduler; every time is in seconds of the clock passed in."""

    endgame_pieces: int = 4
    """A peer whose last pieces are all in flight, and at most this many, is in endgame."""
    endgame_delay: float = 1.0
    """In endgame, a piece in flight this long gets a second source."""
    assignment_timeout: float = 120.0
    """An assignment not reported within this time is taken back and the slot freed."""
    peer_timeout: float = 30.0
    """A peer not heard from (heartbeat or sync) for this long is dropped."""
    flight_silence: float = 12.0
    """A requester with transfers in flight syncs at least every 5 s (and heartbeats as
    often); one silent this long has them taken back (its sources get their slots again)."""
    blacklist_seconds: float = 60.0
    """A source that failed a requester is not offered to that requester for this long."""
    quarantine_seconds: float = 3600.0
    """A source that served a corrupt piece is not offered to anyone for this long."""
    drop_after_unreachable: int = 2
    """Distinct requesters reporting a source unreachable within blacklist_seconds drop it."""
    sample_size: int = 8
    """Holders considered per piece (power of d choices); all of them when fewer."""
    max_batch: int = 32
    """Most assignments returned by one sync."""
    wake_misses: int = 4
    """When capacity frees up, waiting peers are tried until this many get nothing."""
    default_capacity: float = 100e6
    """Upload bytes per second assumed for a peer that declares none."""
    piece_pace: float = 0.1
    """A source takes only as many uploads as it can serve at one piece per this many
    seconds each: fewer, faster transfers make pieces available to re-share sooner."""
    busy_backoff: float = 1.0
    """A source that refused a requester (all slots busy) is not offered to it for this long."""
    degraded_seconds: float = 30.0
    """A source found far slower than its peers is used only as a last resort this long."""

    def __post_init__(self) -> None:
        for name in ("endgame_pieces", "drop_after_unreachable", "sample_size", "max_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"SchedulerConfig.{name} must be at least 1")
        for name in ("assignment_timeout", "peer_timeout", "blacklist_seconds", "flight_silence"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SchedulerConfig.{name} must be positive")


class SourceState(enum.Enum):
    ACTIVE = "active"
    DEGRADED = "degraded"  # much slower than its peers: a last resort, for a while
    QUARANTINED = "quarantined"  # served a corrupt piece: never used, for a while


@dataclass(frozen=True, slots=True)
class Failure:
    piece: int
    source: str
    reason: FailureReason


@dataclass(frozen=True, slots=True)
class Timing:
    """The transfer of ``piece`` (``size`` bytes) from ``source`` took ``seconds``."""

    piece: int
    source: str
    size: int
    seconds: float


@dataclass(frozen=True, slots=True)
class Assignment:
    """Fetch ``piece`` from ``source`` (a peer id or a seed id)."""

    piece: int
    source: str


@dataclass(slots=True)
class Decisions:
    """What an event decided: new assignments per ``(task, peer)`` and peers dropped."""

    assignments: dict[tuple[str, str], list[Assignment]] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)

    def merge(self, other: Decisions) -> Decisions:
        for key, batch in other.assignments.items():
            self.assignments.setdefault(key, []).extend(batch)
        self.dropped.extend(other.dropped)
        self.quarantined.extend(other.quarantined)
        self.degraded.extend(other.degraded)
        return self


class UnknownPeer(KeyError):
    """The peer is not registered (never was, timed out, or was dropped)."""


class UnknownTask(KeyError):
    """The task is not known to the scheduler."""
