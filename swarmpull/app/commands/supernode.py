"""``swarmpull supernode``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from swarmpull.app.args import (
    add_cluster_tls_arguments,
    add_registry_arguments,
    hostport_arg,
    limit_arg,
    positive_int,
    seconds_arg,
    serve_listening,
    size_arg,
)
from swarmpull.app.commands.peer import add_storage_arguments, upstream_config
from swarmpull.app.events import add_events_argument, with_events


def origin_limit_arg(text: str):  # type: ignore[no-untyped-def]
    from supernode.origin_limits import parse_origin_limit

    try:
        return parse_origin_limit(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def upstream_allow_arg(text: str) -> str:
    from swarmpull.core.upstreams import PUBLIC, PatternError, parse_pattern

    if text.strip().lower() != PUBLIC:
        try:
            parse_pattern(text)
        except PatternError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "supernode",
        help="run the supernode: schedules pieces, reads upstreams once, seeds",
        description="Run the supernode (control plane and seed of last resort).",
    )
    p.add_argument(
        "--listen",
        type=hostport_arg,
        default="0.0.0.0:65003",
        metavar="HOST:PORT",
        help="API and seed piece server address (default: %(default)s, every interface)",
    )
    p.add_argument(
        "--advertise",
        metavar="URL",
        help="URL or HOST:PORT peers use to reach this supernode (default: from --listen)",
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
    add_storage_arguments(p)
    p.add_argument(
        "--task-ttl",
        type=seconds_arg,
        default=3600.0,
        metavar="SECONDS",
        help="forget a task nobody opened or reported on for this long; its blob stays in the "
        "seed cache (default: %(default)s)",
    )
    p.add_argument(
        "--piece-size",
        type=size_arg,
        metavar="SIZE",
        help="fixed piece size for new tasks (default: 1 MiB..64 MiB by blob size)",
    )
    p.add_argument(
        "--node-addresses",
        choices=("source", "advertised"),
        default="source",
        help="where a node's piece server is taken to be: at the host its registration comes "
        "from, with the port it advertises (source), or at the URL it advertises (advertised: "
        "nodes behind NAT or a proxy that hides their addresses) (default: %(default)s)",
    )
    p.add_argument(
        "--seed-upload-slots",
        type=positive_int,
        default=64,
        metavar="N",
        help="concurrent piece uploads from the seed (default: %(default)s)",
    )
    p.add_argument(
        "--seed-copies",
        type=positive_int,
        default=2,
        metavar="N",
        help="times the seed sends a piece before it sends it only where fewer than N live "
        "peers hold it (default: %(default)s)",
    )
    p.add_argument(
        "--seed-upload-limit",
        type=limit_arg,
        default="none",
        metavar="RATE",
        help="upload rate of the seed, e.g. 500MB/s; 0 or none: no limit (default: %(default)s)",
    )
    p.add_argument(
        "--origin-limit",
        dest="origin_limits",
        action="append",
        default=[],
        type=origin_limit_arg,
        metavar="HOST=RATE,Nconn",
        help="cap reads from one upstream, e.g. registry.example.com=200MB/s,8conn; repeatable "
        "(default: no cap)",
    )
    p.add_argument(
        "--origin-limits",
        dest="origin_limits_file",
        type=Path,
        metavar="FILE",
        help='the same caps in a TOML file: [origins."HOST"] rate = "200MB/s", connections = 8 '
        "(default: none)",
    )
    p.add_argument(
        "--upstream-allow",
        dest="upstream_allow",
        action="append",
        default=[],
        type=upstream_allow_arg,
        metavar="PATTERN",
        help="an upstream the supernode may read: HOST, *.DOMAIN, ADDRESS or NETWORK, with :PORT "
        "but for a network, or 'public'; repeatable. Loopback, link-local, private, CGNAT, "
        "unspecified and multicast addresses are refused unless a pattern names them (default: "
        "public, any public address)",
    )
    p.add_argument(
        "--direct-per-task",
        type=int,
        default=4,
        metavar="N",
        help="peers that may read an upstream directly once the supernode failed to (default: %(default)s)",
    )
    add_registry_arguments(p)
    p.add_argument(
        "--tag-ttl",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="a tag's resolution stands this long for the whole cluster (default: %(default)s)",
    )
    p.add_argument(
        "--tag-stale",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="while the registry is unavailable, older resolutions answer this long (default: %(default)s)",
    )
    p.add_argument(
        "--auth-cache-ttl",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="a credential's checked pull rights on a repository stand this long (default: %(default)s)",
    )
    p.add_argument(
        "--redis",
        metavar="URL",
        help="share task state with other replicas through Redis: redis://HOST:PORT/DB or "
        "rediss://... (default: state in memory, one supernode)",
    )
    p.add_argument(
        "--redis-password-file",
        type=Path,
        metavar="FILE",
        help="read the Redis password from FILE (default: $SWARMPULL_REDIS_PASSWORD, else none)",
    )
    p.add_argument(
        "--lease-ttl",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="with --redis: how long a task's lease outlives a dead owner (default: %(default)s)",
    )
    p.add_argument(
        "--ui-token-file",
        type=Path,
        metavar="FILE",
        help="serve the live dashboard at /ui/ to whoever presents the token in FILE "
        "(make one with: openssl rand -hex 32 > FILE; default: no dashboard)",
    )
    p.add_argument(
        "--torrent-listen",
        type=hostport_arg,
        metavar="HOST:PORT",
        help="where the seed's libtorrent accepts peers, TCP and uTP (default: --listen's host, any port)",
    )
    add_cluster_tls_arguments(p)
    add_events_argument(p)
    p.set_defaults(func=run, default_log_level="info")


def run(args: argparse.Namespace) -> int:
    from supernode.config import SupernodeConfig
    from supernode.dashboard import read_token
    from supernode.origin_limits import load_origin_limits
    from supernode.server import Supernode
    from swarmpull.app.args import CommandError, UsageError, cluster_tls, insecure_warning, registry_options
    from swarmpull.core.identity import Role
    from swarmpull.edges.daemon import run_daemon
    from swarmpull.edges.torrent import TorrentConfig, Transport

    origins = list(args.origin_limits)
    password = os.environ.get("SWARMPULL_REDIS_PASSWORD") or None
    if args.redis_password_file is not None:
        try:
            password = args.redis_password_file.read_text().strip()
        except OSError as exc:
            raise CommandError(f"cannot read {args.redis_password_file}: {exc.strerror}") from None
    try:  # what the files hold
        ui_token = read_token(args.ui_token_file) if args.ui_token_file is not None else None
        if args.origin_limits_file is not None:
            origins += load_origin_limits(args.origin_limits_file)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    tls = cluster_tls(args, Role.SUPERNODE)
    try:
        config = SupernodeConfig(
            listen=args.listen,
            advertise=args.advertise,
            data_dir=args.data_dir,
            cache_size=args.cache_size,
            min_free=args.min_free,
            upstream=upstream_config(args),
            task_ttl=args.task_ttl,
            piece_size=args.piece_size,
            seed_upload_slots=args.seed_upload_slots,
            node_addresses=args.node_addresses,
            seed_copies=args.seed_copies,
            seed_upload_limit=args.seed_upload_limit,
            origin_limits=tuple(origins),
            upstream_allow=tuple(args.upstream_allow),
            direct_per_task=args.direct_per_task,
            registry=registry_options(args),
            tag_ttl=args.tag_ttl,
            tag_stale=args.tag_stale,
            auth_cache_ttl=args.auth_cache_ttl,
            redis_url=args.redis,
            redis_password=password,
            lease_ttl=args.lease_ttl,
            ui_token=ui_token,
            torrent=TorrentConfig(listen=args.torrent_listen, transport=Transport.BOTH),
            tls=tls,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    supernode = with_events(args.events, lambda events: Supernode(config, events=events))
    flags = {"--listen": args.listen, "--torrent-listen": args.torrent_listen}
    serve_listening(lambda: run_daemon(supernode), flags, insecure_warning(tls))
    return 0
