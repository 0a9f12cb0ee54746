"""``swarmpull supernode``."""

from __future__ import annotations

import argparse
from pathlib import Path

from swarmpull.cli import hostport_arg, positive_int, size_arg


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "supernode",
        help="run the supernode: schedules pieces, reads upstreams once, seeds",
        description="Run the supernode (control plane and seed of last resort).",
    )
    p.add_argument(
        "--listen",
        type=hostport_arg,
        default="127.0.0.1:65003",
        metavar="HOST:PORT",
        help="API and seed piece server address (default: %(default)s)",
    )
    p.add_argument(
        "--advertise", metavar="URL", help="URL peers use to reach this supernode (default: from --listen)"
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="seed cache directory (default: a temporary directory removed on exit)",
    )
    p.add_argument(
        "--cache-size",
        type=size_arg,
        metavar="SIZE",
        help="most bytes the seed cache holds, e.g. 100GB (default: no limit)",
    )
    p.add_argument(
        "--piece-size",
        type=size_arg,
        metavar="SIZE",
        help="fixed piece size for new tasks (default: 1 MiB..64 MiB by blob size)",
    )
    p.add_argument(
        "--seed-upload-slots",
        type=positive_int,
        default=16,
        metavar="N",
        help="concurrent piece uploads from the seed (default: %(default)s)",
    )
    p.set_defaults(func=run, default_log_level="info")


def run(args: argparse.Namespace) -> int:
    from supernode.config import SupernodeConfig
    from supernode.server import Supernode
    from swarmpull.cli import CommandError
    from swarmpull.daemon import run_daemon

    try:
        config = SupernodeConfig(
            listen=args.listen,
            advertise=args.advertise,
            data_dir=args.data_dir,
            cache_size=args.cache_size,
            piece_size=args.piece_size,
            seed_upload_slots=args.seed_upload_slots,
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    run_daemon(lambda: Supernode(config))
    return 0
