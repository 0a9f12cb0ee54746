"""``swarmpull get``, and the peer daemon's flags (``swarmpull peer`` itself is the node
daemon of ``swarmpull.app.commands.node``: the peer with the registry proxy in front)."""

from __future__ import annotations

import argparse
from pathlib import Path

from swarmpull.app.args import (
    add_cluster_tls_arguments,
    digest_arg,
    hostport_arg,
    labels_arg,
    limit_arg,
    positive_int,
    share_arg,
    size_arg,
    url_arg,
)

DEFAULT_PEER_DATA_DIR = Path("/var/lib/swarmpull/peer")


def add_supernode_argument(p: argparse.ArgumentParser) -> None:
    """``--supernode``, required: a node daemon without one could share nothing."""
    p.add_argument(
        "--supernode",
        dest="supernodes",
        action="append",
        type=url_arg,
        required=True,
        metavar="URL",
        help="supernode URL; repeat for replicas (required)",
    )


def add_peer_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of the peer daemon."""
    add_supernode_argument(p)
    p.add_argument(
        "--listen",
        type=hostport_arg,
        default="0.0.0.0:65002",
        metavar="HOST:PORT",
        help="where other peers fetch pieces from this node (default: %(default)s, every interface)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_PEER_DATA_DIR,
        metavar="DIR",
        help="piece store and peer identity (default: %(default)s)",
    )
    p.add_argument(
        "--advertise",
        metavar="URL",
        help="URL or HOST:PORT other peers use to reach this node (default: from --listen)",
    )
    p.add_argument(
        "--api-listen",
        type=hostport_arg,
        default="127.0.0.1:65000",
        metavar="HOST:PORT",
        help="local API for `swarmpull get --peer`; keep it on loopback (default: %(default)s)",
    )
    p.add_argument(
        "--labels",
        type=labels_arg,
        default={},
        metavar="zone=Z,rack=R",
        help="topology labels: sources in the same rack, then zone, are preferred (default: none)",
    )
    p.add_argument(
        "--cache-size",
        type=size_arg,
        default="20GB",
        metavar="SIZE",
        help="most bytes the piece store holds (default: %(default)s)",
    )
    add_storage_arguments(p)
    p.add_argument(
        "--scrub-rate",
        type=limit_arg,
        default="50MB/s",
        metavar="RATE",
        help="re-verify complete blobs after a restart at this rate; none: only as they are "
        "read (default: %(default)s)",
    )
    p.add_argument(
        "--upload-slots",
        type=int,
        default=16,
        metavar="N",
        help="concurrent uploads; as many more wait in line, and one more is refused at once "
        "with a retry hint (default: %(default)s)",
    )
    p.add_argument(
        "--upload-limit",
        type=limit_arg,
        default="100MB/s",
        metavar="RATE",
        help="upload rate to other peers, e.g. 50MB/s or 400Mbit/s; 0 or none: no limit "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--download-limit",
        type=limit_arg,
        default="200MB/s",
        metavar="RATE",
        help="download rate from peers and seeds; 0 or none: no limit (default: %(default)s)",
    )
    p.add_argument(
        "--max-direct",
        type=positive_int,
        default=2,
        metavar="N",
        help="blobs read straight from upstream at once when the swarm cannot serve (default: %(default)s)",
    )
    p.add_argument(
        "--no-compression", action="store_true", help="never send or accept zstd-compressed pieces"
    )
    p.add_argument(
        "--download-slots",
        type=positive_int,
        default=16,
        metavar="N",
        help="concurrent piece downloads, all blobs together (default: %(default)s)",
    )
    p.add_argument("--peer-id", metavar="ID", help="identity (default: generated once, kept in --data-dir)")
    bt = p.add_argument_group("BitTorrent (preheat, warm blobs)")
    bt.add_argument(
        "--preheat-transport",
        choices=["utp", "tcp"],
        default="utp",
        help="uTP (LEDBAT: yields to business traffic) or TCP (default: %(default)s)",
    )
    bt.add_argument(
        "--preheat-limit",
        default="25%",
        metavar="RATE|N%",
        help="cap on preheat traffic each way: a rate, a share of --upload-limit, or none "
        "(default: %(default)s)",
    )
    bt.add_argument(
        "--torrent-listen",
        type=hostport_arg,
        metavar="HOST:PORT",
        help="where libtorrent accepts peers, TCP and uTP (default: --listen's host, any port)",
    )
    bt.add_argument(
        "--blob-transport",
        choices=["http", "bittorrent"],
        default="http",
        help="how pulls fetch a blob the seed holds whole: the scheduled HTTP swarm, or "
        "libtorrent (HTTP when no torrent is offered) (default: %(default)s)",
    )
    bt.add_argument("--no-preheat", action="store_true", help="take no part in preheats")
    add_cluster_tls_arguments(p)


def output_arg(text: str) -> Path | None:
    """``-o FILE``; ``-`` (stdout) is None."""
    return None if text == "-" else Path(text)


def add_storage_arguments(p: argparse.ArgumentParser) -> None:
    """Bounds on the disk a daemon's store uses and on the blobs it reads from upstreams."""
    p.add_argument(
        "--min-free",
        type=share_arg,
        default="5%",
        metavar="SHARE",
        help="free space to leave on the store's file system: least recently used blobs are "
        "evicted, and new ones refused, below it (default: %(default)s)",
    )
    p.add_argument(
        "--max-blob-size",
        type=size_arg,
        default="64GiB",
        metavar="SIZE",
        help="refuse a blob an upstream declares larger than this (default: %(default)s)",
    )


def upstream_config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The UpstreamConfig of ``add_storage_arguments``."""
    from swarmpull.edges.origin import UpstreamConfig

    return UpstreamConfig(max_blob_size=args.max_blob_size)


def peer_config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The PeerConfig the flags of ``add_peer_arguments`` describe."""
    from peer.config import PeerConfig
    from swarmpull.app.args import UsageError, cluster_tls
    from swarmpull.core.identity import Role
    from swarmpull.edges.torrent import TorrentConfig, Transport
    from swarmpull.edges.transport import TransportConfig

    unknown = set(args.labels) - {"zone", "rack"}
    if unknown:
        raise UsageError(f"unknown labels {', '.join(sorted(unknown))}: use zone= and rack=")
    tls = cluster_tls(args, Role.NODE)
    try:
        return PeerConfig(
            data_dir=args.data_dir,
            supernodes=tuple(args.supernodes),
            listen=args.listen,
            advertise=args.advertise,
            api_listen=args.api_listen,
            zone=args.labels.get("zone"),
            rack=args.labels.get("rack"),
            cache_size=args.cache_size,
            min_free=args.min_free,
            scrub_rate=args.scrub_rate,
            upstream=upstream_config(args),
            upload_slots=args.upload_slots,
            download_slots=args.download_slots,
            upload_limit=args.upload_limit,
            download_limit=args.download_limit,
            max_direct=args.max_direct,
            transport=TransportConfig(compression=not args.no_compression),
            peer_id=args.peer_id,
            torrent=TorrentConfig(listen=args.torrent_listen, transport=Transport(args.preheat_transport)),
            preheat_limit=preheat_limit(args.preheat_limit, args.upload_limit),
            blob_transport=args.blob_transport,
            preheat=not args.no_preheat,
            tls=tls,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def preheat_limit(text: str, upload_limit: int | None) -> int | None:
    """``--preheat-limit``: a rate, ``none``, or a share of the upload limit (``25%``)."""
    from swarmpull.app.args import UsageError

    if text.strip().endswith("%"):
        try:
            share = float(text.strip()[:-1]) / 100
        except ValueError:
            raise UsageError(f"--preheat-limit: not a share: {text!r}") from None
        if not 0 < share <= 1:
            raise UsageError("--preheat-limit: a share is from 1% to 100%")
        return None if upload_limit is None else max(1024, int(upload_limit * share))
    try:
        return limit_arg(text)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"--preheat-limit: {exc}") from None


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    g = subparsers.add_parser(
        "get",
        help="download one file through the swarm",
        description="Download URL to FILE through the swarm: via the local peer daemon "
        "(--peer) or as a one-shot peer (--supernode). FILE appears only when complete "
        "and verified.",
    )
    g.add_argument("url", type=url_arg, metavar="URL", help="the file's http(s) URL")
    g.add_argument(
        "-o",
        "--output",
        type=output_arg,
        required=True,
        metavar="FILE",
        help="where to write it; - for stdout, where bytes flow as they are verified (required)",
    )
    g.add_argument(
        "--digest",
        type=digest_arg,
        metavar="sha256:HEX",
        help="expected digest: verified, and makes the blob shareable by content (default: none)",
    )
    g.add_argument(
        "--header",
        dest="headers",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="header for the upstream request, e.g. an Authorization token; repeatable (default: none)",
    )
    g.add_argument(
        "--background",
        action="store_true",
        help="prefetch: yield download slots and bandwidth to pulls a client waits on",
    )
    g.add_argument(
        "-q", "--quiet", action="store_true", help="no summary line on success (warnings still show)"
    )
    where = g.add_mutually_exclusive_group()
    where.add_argument(
        "--peer", type=url_arg, metavar="URL", help="local peer daemon API (default: http://127.0.0.1:65000)"
    )
    where.add_argument(
        "--supernode",
        dest="supernodes",
        action="append",
        type=url_arg,
        metavar="URL",
        help="join the swarm as a one-shot peer instead; repeat for replicas (default: through --peer)",
    )
    add_cluster_tls_arguments(g)  # with --supernode: the one-shot peer talks to the cluster
    g.set_defaults(func=run_get, default_log_level="error")


def run_get(args: argparse.Namespace) -> int:
    import logging
    import sys
    import time

    from peer.get import GetError, get_file
    from swarmpull.app.args import INSECURE_WARNING, CommandError, UsageError, cluster_tls
    from swarmpull.core.identity import Role
    from swarmpull.core.rates import Priority
    from swarmpull.edges.daemon import run_coroutine

    headers = {}
    for item in args.headers:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise UsageError(f"a header looks like 'Name: value', not {item!r}")
        headers[name.strip()] = value.strip()
    if args.output is not None:
        if args.output.is_dir():
            raise CommandError(f"{args.output} is a directory; give a file name")
        if not args.output.absolute().parent.is_dir():
            raise CommandError(f"directory {args.output.absolute().parent} does not exist")
    peer = None if args.supernodes else (args.peer or "http://127.0.0.1:65000")
    tls = cluster_tls(args, Role.NODE) if args.supernodes else None
    plain = [url for url in args.supernodes or () if not url.startswith("https://")]
    if tls is not None and plain:
        raise UsageError(f"with --tls-dir supernodes are https:// URLs, not {plain[0]}")
    if args.supernodes and tls is None:  # a log line: shown with --log-level warning
        logging.getLogger("swarmpull").warning("%s", INSECURE_WARNING)

    async def fetch():  # type: ignore[no-untyped-def]
        return await get_file(
            args.url,
            args.output,
            digest=args.digest,
            peer_api=peer,
            supernodes=tuple(args.supernodes or ()),
            headers=headers,
            priority=Priority.BACKGROUND if args.background else Priority.FOREGROUND,
            tls=tls,
        )

    started = time.monotonic()
    try:
        fetched = run_coroutine(fetch)
    except GetError as exc:
        raise CommandError(str(exc)) from None
    if fetched.bypassed:
        why = fetched.bypassed
        warning = f"swarmpull: warning: the swarm was bypassed, read straight from the upstream: {why}"
        print(warning, file=sys.stderr)
    if not args.quiet:
        print(get_summary(fetched, args.output, time.monotonic() - started), file=sys.stderr)
    return 0


def get_summary(fetched, output: Path | None, seconds: float) -> str:  # type: ignore[no-untyped-def]
    """``swarmpull get``'s closing line: what arrived, how fast, from where."""
    from swarmpull.core.units import format_size

    where = "stdout" if output is None else str(output)
    rate = format_size(fetched.size / max(seconds, 1e-3))
    sources = fetched.sources
    parts = [
        f"{format_size(sources.get('peer', 0))} from peers",
        f"{format_size(sources.get('seed', 0))} from the seed",
        f"{format_size(sources.get('upstream', 0))} from the upstream",
    ]
    if sources.get("bittorrent"):
        parts.append(f"{format_size(sources['bittorrent'])} over BitTorrent")
    if sources.get("local"):
        parts.append(f"{format_size(sources['local'])} already on this node")
    gigabytes = max(fetched.size / 1e9, 1e-9)
    cpu = f"CPU {fetched.cpu_here / gigabytes:.2f} s/GB here"
    if fetched.cpu_daemon is not None:
        cpu += f", {fetched.cpu_daemon / gigabytes:.2f} s/GB in the daemon"
    return (
        f"swarmpull: got {format_size(fetched.size)} into {where} in {seconds:.1f} s ({rate}/s): "
        + ", ".join(parts)
        + f"; {cpu}"
    )
