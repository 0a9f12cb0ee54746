"""Swarm events: what a daemon writes to its ``--events`` file, one JSON object a line.

Every line carries ``t`` (Unix time in seconds, the writer's wall clock: files from
different machines are merged by it), ``event`` (a kind of ``KINDS``), ``role``
(``supernode`` or ``peer``) and ``node`` (the writer: a peer id, or the supernode's URL),
then the fields of its kind. docs/EVENTS.md documents each kind; ``KINDS`` is the list the
writers and ``swarmpull events summarize`` agree on. Fields may be added (readers ignore
what they do not know); a field that changes meaning gets a new ``SCHEMA``.

Daemons write through an ``EventSink``; ``NO_EVENTS`` is the sink of a daemon started
without ``--events`` (it costs a call). The writer (``swarmpull.edges.events``) owns the file.
"""

from __future__ import annotations

from typing import Any, Protocol

SCHEMA = 1

# kind -> the fields every event of that kind has (beyond t, event, role, node)
KINDS: dict[str, tuple[str, ...]] = {
    # the writer's own
    "log_opened": ("schema",),
    "events_dropped": ("count",),
    # supernode
    "peer_joined": ("peer", "address", "zone", "rack"),
    "peer_left": ("peer", "why"),
    "parents_assigned": ("task", "peer", "parents"),
    "quarantined": ("peer",),
    "degraded": ("peer", "why"),
    "unheeded": ("peer",),
    # both: a task opened (supernode: created or taken over; peer: a download started)
    # and finished (supernode: the upstream read ended; peer: the blob is verified or failed)
    "task_opened": ("task",),
    "task_finished": ("task", "ok"),
    "upstream_read": ("task", "bytes"),
    # peer
    "piece_finished": ("task", "piece", "source", "seed", "bytes", "seconds"),
    "piece_failed": ("task", "piece", "source", "reason", "why"),
    "fallback": ("task", "reason"),
}

ROLES = ("supernode", "peer")


class EventSink(Protocol):
    """Where a daemon's swarm events go. ``emit`` never blocks and never raises."""

    enabled: bool
    """False when events go nowhere: a caller may skip work done only for an event."""

    def emit(self, kind: str, /, **fields: Any) -> None: ...


class _NoEvents:
    enabled = False

    def emit(self, kind: str, /, **fields: Any) -> None:
        return None


NO_EVENTS: EventSink = _NoEvents()


class Tagged:
    """A sink that stamps every event with its writer (``role``, ``node``): many daemons
    of one process (the load test's workers) can share one file."""

    __slots__ = ("_sink", "_tags", "enabled")

    def __init__(self, sink: EventSink, role: str, node: str) -> None:
        if role not in ROLES:
            raise ValueError(f"role is one of {ROLES}, not {role!r}")
        self._sink = sink
        self._tags = {"role": role, "node": node}
        self.enabled = sink.enabled

    def emit(self, kind: str, /, **fields: Any) -> None:
        if self.enabled:
            self._sink.emit(kind, **self._tags, **fields)
