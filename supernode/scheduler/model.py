"""Types of the scheduler: its configuration, the events' payloads and its answers."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from supernode.scheduler.standing import StandingConfig
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
    """Distinct requesters (with standing) that must report corrupt pieces from a source
    to quarantine it when the supernode's own check cannot decide."""
    check_seconds: float = 10.0
    """A source accused of corruption waits this long for the supernode's own check (it
    fetches a piece from the source and compares its sha256) before the witnesses alone
    decide; 0: the supernode checks nothing (the simulator)."""
    check_interval: float = 60.0
    """At most one check of a source this often; a check that found the bytes right
    vouches for the source this long (corrupt claims about it are disproved)."""
    failure_witnesses: int = 2
    """Distinct requesters that must report a source unreachable or stalled within
    ``blacklist_seconds`` before it is dropped (or degraded)."""
    degraded_seconds: float = 30.0
    """A source found far slower than its peers is not given as a parent this long."""
    default_capacity: float = 100e6
    """Upload bytes per second assumed for a peer that declares none."""
    claim_rate: float = 1.25e9
    """Bytes per second (10 Gbit/s) beyond which a member's holdings grew faster than it
    could have fetched them (at an open, any holdings at all): the supernode then fetches
    one of the new pieces from it. Too low costs a check of an honest peer, never its
    holdings."""
    standing: StandingConfig = field(default_factory=StandingConfig)
    """When a reporter caught lying stops being believed (``standing``)."""

    def __post_init__(self) -> None:
        for name in ("parents", "candidates", "seed_children", "corrupt_witnesses", "failure_witnesses"):
            if getattr(self, name) < 1:
                raise ValueError(f"SchedulerConfig.{name} must be at least 1")
        for name in ("peer_timeout", "blacklist_seconds", "children_per_parent", "check_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SchedulerConfig.{name} must be positive")
        if self.check_seconds < 0:
            raise ValueError("SchedulerConfig.check_seconds must not be negative")


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


class CheckKind(enum.Enum):
    CORRUPT = "corrupt"  # a requester says the source sent a corrupt piece
    HOLDINGS = "holdings"  # the source claimed pieces it may never have fetched


@dataclass(frozen=True, slots=True)
class Check:
    """The supernode is to fetch one of ``have`` from ``source`` and tell the scheduler
    what it found: for an accusation (``CORRUPT``) ``confirm_corrupt``, ``cleared`` or
    ``check_failed``; for claimed holdings (``HOLDINGS``) ``confirm_corrupt`` or, when
    the source does not hold the piece, ``holdings_refuted``."""

    task_id: str
    source: str
    have: int
    kind: CheckKind = CheckKind.CORRUPT


@dataclass(slots=True)
class Events:
    """What an event did besides answering its caller: peers dropped, quarantined or
    degraded, reporters that lost standing (for the log and the metrics), and the checks
    the supernode is to make."""

    dropped: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    degraded: list[tuple[str, str]] = field(default_factory=list)  # (peer, why)
    unheeded: list[str] = field(default_factory=list)  # reporters that just lost standing
    checks: list[Check] = field(default_factory=list)

    def merge(self, other: Events) -> Events:
        self.dropped.extend(other.dropped)
        self.quarantined.extend(other.quarantined)
        self.degraded.extend(other.degraded)
        self.unheeded.extend(other.unheeded)
        self.checks.extend(other.checks)
        return self


class UnknownPeer(KeyError):
    """The peer is not registered (never was, timed out, or was dropped)."""


class SeedId(UnknownPeer):
    """A peer named itself as a seed: that id is the seed's, never a peer's."""


class UnknownTask(KeyError):
    """The task is not known to the scheduler."""
