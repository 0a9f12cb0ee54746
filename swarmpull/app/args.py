"""Argument types of the ``swarmpull`` command line, and the error a command reports.

Each subcommand module (``swarmpull.app.commands``) parses its flags with these into the
configuration of the role it runs; a bad value is a usage error naming the flag.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from swarmpull.core.digest import Digest
from swarmpull.core.units import parse_rate, parse_size
from swarmpull.edges.http import BindError, HostPort

if TYPE_CHECKING:
    from swarmpull.core.identity import Role
    from swarmpull.edges.tls import ClusterTls


class CommandError(Exception):
    """A failure to report as ``swarmpull: error: <message>`` with exit status 1."""


class UsageError(CommandError):
    """A command line that cannot work (a flag's value, a file it names, flags that clash),
    found before the command starts: exit status 2, as argparse's own usage errors."""


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
    """A rate, or ``0``/``none``/``unlimited`` for no limit."""
    if text.strip().lower() in ("none", "0", "unlimited"):
        return None
    return rate_arg(text)


hostport_arg = _typed(HostPort.parse, "HOST:PORT")
digest_arg = _typed(Digest.parse, "digest")


def share_arg(text: str) -> float:
    """A share of a whole: ``5%`` or ``0.05``."""
    body = text.strip()
    try:
        value = float(body[:-1]) / 100 if body.endswith("%") else float(body)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a share: {text!r} (examples: 5%, 0.05)") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"a share is from 0% to below 100%, not {text!r}")
    return value


def seconds_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text!r}")
    return value


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


# ------------------------------------------------------------- listening


def serve_listening(
    serve: Callable[[], None], flags: dict[str, HostPort | None], warning: str | None = None
) -> None:
    """Run a daemon that listens on the addresses ``flags`` gave (``--listen`` and the
    like); an address it cannot have is an error naming its flag. Two flags with the
    same address are a usage error, found before anything starts; ``warning`` is logged
    once the command line is known good, as the daemon starts."""
    seen: dict[HostPort, str] = {}
    for flag, where in flags.items():
        if where is None or where.port == 0:
            continue
        if where in seen:
            raise UsageError(f"{seen[where]} and {flag} are both {where}: give them different ports")
        seen[where] = flag
    if warning is not None:
        logging.getLogger("swarmpull").warning("%s", warning)
    try:
        serve()
    except BindError as exc:
        flag = next((f for f, where in flags.items() if where == exc.where), "an address")
        raise CommandError(f"{flag}: {exc.strerror}") from None


# ------------------------------------------------------------- registry options


def add_registry_arguments(p: argparse.ArgumentParser) -> None:
    """How upstream registries are reached: the proxy, the supernode and preheat share these."""
    p.add_argument(
        "--default-registry",
        default="docker.io",
        metavar="HOST",
        help="upstream for requests that name no registry (default: %(default)s)",
    )
    p.add_argument(
        "--insecure-registry",
        dest="insecure",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="speak plain HTTP to this registry (opt-in; repeatable; default: none)",
    )
    p.add_argument(
        "--registry-ca",
        type=Path,
        metavar="FILE",
        help="extra CA certificates (PEM) to trust for registries (default: the system's only)",
    )
    p.add_argument(
        "--registry-auth",
        type=Path,
        metavar="FILE",
        help="docker config.json with registry credentials (default: none)",
    )


def registry_options(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The ``RegistryOptions`` of ``add_registry_arguments``: a UsageError for a bad value,
    a CommandError for a file that is not there."""
    from swarmpull.edges.registry import RegistryOptions

    for path in (args.registry_ca, args.registry_auth):
        if path is not None and not path.is_file():
            raise CommandError(f"{path}: no such file")
    try:
        return RegistryOptions(
            default_registry=args.default_registry,
            insecure_registries=frozenset(args.insecure),
            ca=args.registry_ca,
            credentials=args.registry_auth,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


# ------------------------------------------------------------- the cluster's TLS

TLS_NEEDED = "give --tls-dir DIR (mutual TLS with the cluster CA, see docs/SECURITY.md) or --insecure-cluster"
INSECURE_WARNING = (
    "--insecure-cluster: plain HTTP inside the cluster; any host that reaches it can act in "
    "any node's name and read every piece (a test cluster only)"
)


def add_cluster_tls_arguments(p: argparse.ArgumentParser) -> None:
    """``--tls-dir`` or ``--insecure-cluster``: how a command talks to the rest of the
    cluster. One of them is needed (``cluster_tls``): plain HTTP is never a default."""
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--tls-dir",
        type=Path,
        metavar="DIR",
        help="this component's TLS directory (ca.pem, cert.pem, key.pem, from `swarmpull ca issue`): "
        "mutual TLS with the cluster CA, the identity is the certificate's (docs/SECURITY.md; "
        "default: none, and then --insecure-cluster is required)",
    )
    group.add_argument(
        "--insecure-cluster",
        action="store_true",
        help="plain HTTP inside the cluster, where anyone can act in any node's name: "
        "for a test cluster on a trusted network only",
    )


def cluster_tls(args: argparse.Namespace, role: Role) -> ClusterTls | None:
    """The ClusterTls of ``--tls-dir`` for a component of ``role`` (checked now: a
    UsageError names the file that cannot serve), or None with ``--insecure-cluster``
    (whose ``INSECURE_WARNING`` the command logs as it starts). Neither flag: a
    UsageError."""
    from swarmpull.edges.tls import ClusterTls, TlsError

    if args.tls_dir is None:
        if not args.insecure_cluster:
            raise UsageError(TLS_NEEDED)
        return None
    try:
        # Clients without a certificate may finish the handshake: health checks, metrics
        # and the dashboard answer them; every other path refuses them (401).
        return ClusterTls.load(args.tls_dir, now=datetime.now(UTC), role=role, require_client_cert=False)
    except TlsError as exc:
        raise UsageError(f"--tls-dir: {exc}") from None


def insecure_warning(tls: ClusterTls | None) -> str | None:
    """What a command says as it starts without mutual TLS."""
    return INSECURE_WARNING if tls is None else None
