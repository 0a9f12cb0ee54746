"""The ``swarmpull`` command: one entry point, a subcommand per job.

The composition root of the product: each module of ``swarmpull.app.commands`` turns one
role's flags into its configuration and runs it (``register(subparsers)``); this module
builds the parser, sets up logging and turns failures into one readable line
and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from swarmpull import __version__
from swarmpull.app.args import CommandError, UsageError
from swarmpull.core.digest import DigestError
from swarmpull.edges.store import StoreError

# ---------------------------------------------------------------------- main


class Parser(argparse.ArgumentParser):
    """Usage mistakes are one line on stderr (and exit status 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from swarmpull.app.commands import ca, events, loadtest, node, peer, preheat, supernode

    parser = Parser(
        prog="swarmpull",
        description="Peer-to-peer container image distribution.",
    )
    parser.add_argument("--version", action="version", version=f"swarmpull {__version__}")
    _add_log_level(parser, default=None)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    supernode.register(subparsers)
    node.register(subparsers)
    peer.register(subparsers)
    loadtest.register(subparsers)
    preheat.register(subparsers)
    ca.register(subparsers)
    events.register(subparsers)
    for command in _commands(parser):
        # Accepted after the subcommand too; SUPPRESS keeps a value given before it.
        _add_log_level(command, default=argparse.SUPPRESS)
    return parser


def _add_log_level(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--log-level",
        default=default,
        choices=["debug", "info", "warning", "error"],
        help="log verbosity (default: info for daemons, error for get, warning for the others)",
    )


def _commands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every subcommand's parser, nested ones (``ca issue``) included."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to one parser
                found += [sub, *_commands(sub)]
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = args.log_level or getattr(args, "default_log_level", "warning")
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"swarmpull: error: {exc}", file=sys.stderr)
        return 2
    except CommandError as exc:
        print(f"swarmpull: error: {exc}", file=sys.stderr)
        return 1
    except (DigestError, StoreError) as exc:  # StoreError: e.g. another daemon holds --data-dir
        print(f"swarmpull: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(
            f"swarmpull: error: {exc.strerror or exc or type(exc).__name__}" + _filename(exc), file=sys.stderr
        )
        return 1
    except RuntimeError as exc:
        print(f"swarmpull: error: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("swarmpull: interrupted", file=sys.stderr)
        return 130


def _filename(exc: OSError) -> str:
    return f": {exc.filename}" if exc.filename else ""


if __name__ == "__main__":
    sys.exit(main())
