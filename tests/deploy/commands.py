"""Command lines from deploy/ checked by the real ``swarmpull`` parser, so a renamed or
dropped flag fails here rather than on an operator's node."""

from __future__ import annotations

import argparse
import contextlib
import io

from swarmpull.app.cli import build_parser

# Flags deploy/ passes ahead of the code: skipped only while the subcommand does not know
# them, so the check covers them by itself once it does. None now.
AWAITED_FLAGS: tuple[str, ...] = ()


def parse_command_line(argv: list[str]) -> argparse.Namespace:
    """``argv`` (after ``swarmpull``) parsed as the CLI would; AssertionError with
    argparse's message when it would refuse it."""
    parser = build_parser()
    known = _option_strings(parser, argv[0])
    argv = [arg for arg in argv if not _awaited(arg, known)]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return parser.parse_args(argv)
    except SystemExit:
        raise AssertionError(f"swarmpull {' '.join(argv)}: {stderr.getvalue().strip()}") from None


def _awaited(arg: str, known: set[str]) -> bool:
    flag = arg.partition("=")[0]
    return flag in AWAITED_FLAGS and flag not in known and "=" in arg


def _option_strings(parser: argparse.ArgumentParser, command: str) -> set[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            sub = action.choices[command]
            return {option for a in sub._actions for option in a.option_strings}
    return set()
