"""``--events FILE`` on every daemon: the flag, and the daemon with its events log."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from swarmpull.core.events import NO_EVENTS, EventSink
from swarmpull.edges.daemon import Daemon, DaemonGroup
from swarmpull.edges.events import EventLog


def add_events_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--events",
        type=Path,
        metavar="FILE",
        help="append swarm events to FILE as JSON lines (docs/EVENTS.md; default: none)",
    )


def with_events(path: Path | None, make: Callable[[EventSink], Daemon]) -> Callable[[], Daemon]:
    """A factory of the daemon ``make`` builds, writing its events to ``path`` if given:
    the log opens before the daemon starts and closes after it stopped."""

    def factory() -> Daemon:
        if path is None:
            return make(NO_EVENTS)
        log = EventLog(path)
        return DaemonGroup(log, make(log))

    return factory
