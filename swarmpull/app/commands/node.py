"""``swarmpull peer`` (the node daemon), ``swarmpull proxy``, ``containerd-config``,
``docker-config``."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from swarmpull.app.args import (
    UsageError,
    add_cluster_tls_arguments,
    add_registry_arguments,
    cluster_tls,
    hostport_arg,
    insecure_warning,
    registry_options,
    serve_listening,
    size_arg,
    url_arg,
)
from swarmpull.app.commands.peer import (
    add_peer_arguments,
    add_storage_arguments,
    add_supernode_argument,
    peer_config,
    upstream_config,
)
from swarmpull.app.events import add_events_argument, with_events


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "peer",
        help="run the node daemon: downloads, verifies and serves pieces; the registry proxy",
        description="Run the node daemon: the peer, and with --proxy-listen the registry proxy "
        "containerd pulls through.",
    )
    add_peer_arguments(p)
    p.add_argument(
        "--proxy-listen",
        type=hostport_arg,
        metavar="HOST:PORT",
        help="serve the registry proxy here, e.g. 127.0.0.1:65001 (default: no proxy)",
    )
    add_registry_arguments(p)
    add_events_argument(p)
    p.set_defaults(func=run_node, default_log_level="info")

    s = subparsers.add_parser(
        "proxy",
        help="run the registry proxy alone (a node that downloads through the swarm, serves none)",
        description="Run the registry proxy with a download-only peer of its own.",
    )
    s.add_argument(
        "--listen",
        type=hostport_arg,
        default="127.0.0.1:65001",
        metavar="HOST:PORT",
        help="where containerd reaches the proxy (default: %(default)s)",
    )
    add_supernode_argument(s)
    s.add_argument(
        "--data-dir",
        type=Path,
        default=Path("/var/lib/swarmpull/proxy"),
        metavar="DIR",
        help="piece store (default: %(default)s)",
    )
    s.add_argument(
        "--cache-size",
        type=size_arg,
        default="20GB",
        metavar="SIZE",
        help="most bytes the piece store holds (default: %(default)s)",
    )
    add_storage_arguments(s)
    add_registry_arguments(s)
    add_cluster_tls_arguments(s)
    add_events_argument(s)
    s.set_defaults(func=run_proxy, default_log_level="info")

    c = subparsers.add_parser(
        "containerd-config",
        help="write containerd hosts.toml files that send pulls through the proxy",
        description="Write <config-path>/<registry>/hosts.toml for each registry: the proxy as a "
        "pull/resolve mirror, the registry itself as the server containerd falls back to.",
    )
    c.add_argument(
        "--mirror",
        type=url_arg,
        default="http://127.0.0.1:65001",
        metavar="URL",
        help="the proxy's URL (default: %(default)s)",
    )
    c.add_argument(
        "--registry",
        dest="registries",
        action="append",
        default=[],
        metavar="REGISTRY",
        help="docker.io, ghcr.io, host:port (HTTPS) or http://host:port; repeatable (default: none)",
    )
    c.add_argument("--all", action="store_true", help="also every registry not listed (_default)")
    c.add_argument(
        "--config-path",
        type=Path,
        default=Path("/etc/containerd/certs.d"),
        metavar="DIR",
        help="containerd's registry config_path (default: %(default)s)",
    )
    c.add_argument(
        "--containerd-config",
        type=Path,
        default=Path("/etc/containerd/config.toml"),
        metavar="FILE",
        help="checked for config_path (default: %(default)s)",
    )
    mode = c.add_mutually_exclusive_group()
    mode.add_argument("--remove", action="store_true", help="remove what was written, restore backups")
    mode.add_argument(
        "--hold",
        action="store_true",
        help="write, keep running, and remove what was written when stopped (SIGTERM or "
        "SIGINT): a Kubernetes sidecar or a service whose stop undoes the mirror",
    )
    c.set_defaults(func=run_containerd_config)

    d = subparsers.add_parser(
        "docker-config",
        help="print the docker daemon.json registry-mirrors snippet for the proxy",
    )
    d.add_argument(
        "--mirror",
        type=url_arg,
        default="http://127.0.0.1:65001",
        metavar="URL",
        help="the proxy's URL (default: %(default)s)",
    )
    d.set_defaults(func=run_docker_config)


def _proxy_config(args: argparse.Namespace, listen):  # type: ignore[no-untyped-def]
    from registry_proxy.config import ProxyConfig

    return ProxyConfig(listen=listen, registry=registry_options(args))


def run_node(args: argparse.Namespace) -> int:
    import dataclasses

    from swarmpull.app.node import NodeDaemon
    from swarmpull.edges.daemon import run_daemon

    config = dataclasses.replace(peer_config(args), registry_ca=args.registry_ca)
    proxy = _proxy_config(args, args.proxy_listen) if args.proxy_listen else None
    flags = {
        "--listen": config.listen,
        "--api-listen": config.api_listen,
        "--proxy-listen": args.proxy_listen,
        "--torrent-listen": args.torrent_listen,
    }
    node = with_events(args.events, lambda events: NodeDaemon(config, proxy, events=events))
    serve_listening(lambda: run_daemon(node, on_started=_serving), flags, insecure_warning(config.tls))
    return 0


def _serving(node) -> None:  # type: ignore[no-untyped-def]
    """Said once every address is bound and everything runs, never before."""
    import logging

    from swarmpull.edges.daemon import DaemonGroup

    if isinstance(node, DaemonGroup):  # with --events: the events log, then the node
        node = node.daemons[-1]
    logging.getLogger("swarmpull").info("%s", node.serving())


def run_proxy(args: argparse.Namespace) -> int:
    from peer.config import PeerConfig
    from swarmpull.app.node import NodeDaemon
    from swarmpull.core.identity import Role
    from swarmpull.edges.daemon import run_daemon

    proxy = _proxy_config(args, args.listen)
    tls = cluster_tls(args, Role.NODE)
    try:
        config = PeerConfig(
            data_dir=args.data_dir,
            supernodes=tuple(args.supernodes),
            listen=None,
            api_listen=None,
            cache_size=args.cache_size,
            min_free=args.min_free,
            upstream=upstream_config(args),
            registry_ca=args.registry_ca,
            tls=tls,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    node = with_events(args.events, lambda events: NodeDaemon(config, proxy, events=events))
    serve_listening(
        lambda: run_daemon(node, on_started=_serving), {"--listen": args.listen}, insecure_warning(tls)
    )
    return 0


def run_containerd_config(args: argparse.Namespace) -> int:
    from registry_proxy import hosts

    try:
        entries = [hosts.RegistryEntry.parse(r) for r in args.registries]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.all:
        entries.append(hosts.RegistryEntry.parse("_default"))
    if not entries:
        raise UsageError("name at least one --registry, or --all")
    if args.remove:
        for entry in entries:
            print(hosts.remove(args.config_path, entry))
        return 0
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    if args.hold:
        # Blocked before the first write, so a stop that comes while writing still undoes it.
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    for entry in entries:
        print(f"{hosts.write(args.config_path, entry, args.mirror)}: mirror {args.mirror}")
    hint = hosts.containerd_hint(args.config_path, args.containerd_config)
    if hint:
        print(hint)
    if args.hold:
        print("holding: the files are removed when this command is stopped", flush=True)
        signal.sigwait(stop_signals)
        for entry in entries:
            print(hosts.remove(args.config_path, entry))
    return 0


def run_docker_config(args: argparse.Namespace) -> int:
    print(json.dumps({"registry-mirrors": [args.mirror]}, indent=2))
    print(
        "add this to /etc/docker/daemon.json and restart docker. Docker sends only Docker Hub\n"
        "pulls to mirrors: images from other registries bypass the proxy (containerd's\n"
        "hosts.toml, see `swarmpull containerd-config`, covers every registry).",
        file=sys.stderr,
    )
    return 0
