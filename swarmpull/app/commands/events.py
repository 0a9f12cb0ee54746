"""``swarmpull events summarize``: the load-test report from ``--events`` files."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "events",
        help="read the swarm events daemons wrote with --events",
        description="Read the JSON-lines swarm events that daemons wrote with --events (docs/EVENTS.md).",
    )
    commands = p.add_subparsers(dest="events_command", metavar="COMMAND", required=True)
    s = commands.add_parser(
        "summarize",
        help="the load-test report from events files: completion percentiles, bytes by source, "
        "registry egress",
        description="Merge the events files of any supernodes and nodes (by time) and report as "
        "`swarmpull loadtest` does: completion percentiles (each node from its first download "
        "opened to its last verified), bytes received by source, and registry egress over time.",
    )
    s.add_argument("files", nargs="+", type=Path, metavar="FILE", help="events files (JSON lines)")
    s.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON")
    s.add_argument("--plot", type=Path, metavar="FILE", help="also draw the report as a PNG")
    s.set_defaults(func=run_summarize)


def run_summarize(args: argparse.Namespace) -> int:
    from loadtest.replay import summarize
    from swarmpull.app.commands.loadtest import write_report

    result = summarize(args.files)
    settings = {"events files": len(args.files), "nodes seen": result.nodes}
    write_report([result], settings, args.json, args.plot)
    return 0 if result.failed == 0 else 1
