"""The ``swarmpull`` command: one entry point, a subcommand per job.

Each role keeps its subcommands in its own ``commands.py`` (``register(subparsers)``);
this module builds the parser, sets up logging and turns failures into one readable line
and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from swarmpull.digest import Digest, DigestError
from swarmpull.http import HostPort
from swarmpull.units import parse_rate, parse_size


class CommandError(Exception):
    """A failure to report as ``swarmpull: error: <message>`` with exit status 1."""


# ------------------------------------------------------------- argument types


def _typed(parse, what: str):  # type: ignore[no-untyped-def]
    def convert(text: str):  # type: ignore[no-untyped-def]
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc) or f"invalid {what}: {text!r}") from None

    convert.__name__ = what
    return convert


size_arg = _typed(parse_size, "size")
rate_arg = _typed(parse_rate, "rate")


def limit_arg(text: str) -> int | None:
    """A rate, or ``none``/``0`` for no limit."""
    if text.strip().lower() in ("none", "0", "unlimited"):
        return None
    return rate_arg(text)


hostport_arg = _typed(HostPort.parse, "HOST:PORT")
digest_arg = _typed(Digest.parse, "digest")


def labels_arg(text: str) -> dict[str, str]:
    """``zone=a,rack=r1``."""
    labels = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise argparse.ArgumentTypeError(f"labels look like zone=a,rack=r1, not {text!r}")
        labels[key] = value
    return labels


def url_arg(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"not an http(s) URL: {text!r}")
    return text.rstrip("/")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


# ---------------------------------------------------------------------- main


class Parser(argparse.ArgumentParser):
    """Usage mistakes are one line on stderr (and exit status 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from loadtest import commands as loadtest_commands
    from peer import commands as peer_commands
    from registry_proxy import commands as node_commands
    from supernode import commands as supernode_commands

    parser = Parser(
        prog="swarmpull",
        description="Peer-to-peer container image distribution.",
    )
    parser.add_argument(
        "--log-level",
        default=None,
        choices=["debug", "info", "warning", "error"],
        help="log verbosity (default: info for daemons, warning for commands)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    supernode_commands.register(subparsers)
    node_commands.register(subparsers)
    peer_commands.register(subparsers)
    loadtest_commands.register(subparsers)
    return parser


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
    except CommandError as exc:
        print(f"swarmpull: error: {exc}", file=sys.stderr)
        return 1
    except DigestError as exc:
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
