"""``swarmpull ca``: the cluster CA. ``init`` makes one, ``issue`` gives a node or a
supernode its TLS directory, ``show`` says what a directory holds."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from swarmpull.app.args import CommandError, positive_int
from swarmpull.core.identity import CA_DAYS, NODE_DAYS, IdentityError, Role, check_host, check_name, tls_name

CA_KEY_WARNING = (
    "The CA key (ca-key.pem) makes nodes and supernodes: keep it offline, on the machine "
    "where you issue certificates, and give nodes only their own directory."
)


def _name_arg(text: str) -> str:
    try:
        return check_name(text)
    except IdentityError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _host_arg(text: str) -> str:
    try:
        return check_host(text)
    except IdentityError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "ca",
        help="the cluster CA: make it, issue node and supernode certificates",
        description="Mutual TLS between all components rests on one cluster CA. " + CA_KEY_WARNING,
    )
    actions = p.add_subparsers(dest="ca_command", metavar="ACTION", required=True)

    init = actions.add_parser(
        "init",
        help="make a new CA",
        description="Make a new cluster CA in DIR: ca.pem (its certificate, for every node) "
        "and ca-key.pem (its private key, mode 0600). " + CA_KEY_WARNING,
    )
    init.add_argument("--out", type=Path, required=True, metavar="DIR", help="where to write the CA")
    init.add_argument(
        "--days",
        type=positive_int,
        default=CA_DAYS,
        metavar="N",
        help="how long the CA is valid (default: %(default)s)",
    )
    init.add_argument("--force", action="store_true", help="replace a CA already in DIR")
    init.set_defaults(func=run_init, default_log_level="warning")

    issue = actions.add_parser(
        "issue",
        help="issue a node or supernode certificate",
        description="Issue a certificate for NAME and write the node's TLS directory (its "
        "--tls-dir): ca.pem (the CAs it trusts), cert.pem and key.pem (mode 0600). The name "
        "is the node's peer id (or the supernode's name); the role is part of the "
        "certificate, so a node certificate can never act as a supernode.",
    )
    issue.add_argument("--ca", type=Path, required=True, metavar="DIR", help="the CA (from 'ca init')")
    issue.add_argument(
        "--name",
        type=_name_arg,
        required=True,
        metavar="NAME",
        help="the node's name: its peer id (letters, digits and . _ : -, at most 64)",
    )
    issue.add_argument(
        "--role",
        choices=[r.value for r in Role],
        default=Role.NODE.value,
        help="node or supernode (default: %(default)s)",
    )
    issue.add_argument(
        "--host",
        dest="hosts",
        action="append",
        type=_host_arg,
        default=[],
        metavar="HOST",
        help="an extra IP address or DNS name in the certificate, for tools that check the "
        "host (curl, a metrics scraper); repeat for more. Components do not need it: they "
        "check the node's name",
    )
    issue.add_argument(
        "--days",
        type=positive_int,
        metavar="N",
        help=f"how long the certificate is valid (default: {NODE_DAYS}, or until the CA expires if sooner)",
    )
    issue.add_argument(
        "--trust",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="more CA certificates for the node to trust beside this CA (during a rotation: "
        "the other CA's ca.pem); repeat for more",
    )
    issue.add_argument("--out", type=Path, required=True, metavar="DIR", help="the node's TLS directory")
    issue.add_argument("--force", action="store_true", help="replace the files already in DIR")
    issue.set_defaults(func=run_issue, default_log_level="warning")

    show = actions.add_parser(
        "show",
        help="what a CA or TLS directory holds",
        description="List the certificates in DIR (a CA directory or a node's TLS "
        "directory): who they name, who signed them, until when they are valid; and for a "
        "TLS directory, whether it is usable now.",
    )
    show.add_argument("dir", type=Path, metavar="DIR")
    show.set_defaults(func=run_show, default_log_level="warning")


def run_init(args: argparse.Namespace) -> int:
    from swarmpull.edges.tls import CA_FILE, CA_KEY_FILE, CertificateAuthority, TlsError

    try:
        ca = CertificateAuthority.generate(now=datetime.now(UTC), days=args.days)
        ca.save(args.out, force=args.force)
    except TlsError as exc:
        raise CommandError(str(exc)) from None
    cert = ca.certificate
    print(f"made {cert.subject.rfc4514_string()}, valid until {_date(cert.not_valid_after_utc)}")
    print(f"  {args.out / CA_FILE}: the CA certificate, for every node ('ca issue' copies it)")
    print(f"  {args.out / CA_KEY_FILE}: the CA key (mode 0600). Keep it offline: it makes supernodes")
    return 0


def run_issue(args: argparse.Namespace) -> int:
    from swarmpull.edges.tls import CertificateAuthority, TlsError, write_tls_dir
    from swarmpull.edges.tls.files import is_ca, read_certificates

    role = Role(args.role)
    try:
        ca = CertificateAuthority.load(args.ca)
        trusted = [ca.certificate]
        for path in args.trust:
            for cert in read_certificates(path):
                if not is_ca(cert):
                    raise TlsError(f"{path}: {cert.subject.rfc4514_string()} is not a CA certificate")
                trusted.append(cert)
        issued = ca.issue(args.name, role, now=datetime.now(UTC), days=args.days, hosts=args.hosts)
        paths = write_tls_dir(args.out, issued, trusted, force=args.force)
    except TlsError as exc:
        raise CommandError(str(exc)) from None
    print(
        f"issued a {role.value} certificate for {args.name} ({tls_name(args.name, role)}), "
        f"valid until {_date(issued.certificate.not_valid_after_utc)}"
    )
    print(f"  {', '.join(str(p) for p in paths)}: start the {role.value} with --tls-dir {args.out}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives.hashes import SHA256

    from swarmpull.edges.tls import CA_FILE, CERT_FILE, TlsError, load_tls_dir
    from swarmpull.edges.tls.files import identity_of_certificate, read_certificates

    found = False
    for name in (CA_FILE, CERT_FILE):
        path = args.dir / name
        if not path.exists():
            continue
        found = True
        try:
            certs = read_certificates(path)
        except TlsError as exc:
            raise CommandError(str(exc)) from None
        for cert in certs:
            try:
                who = str(identity_of_certificate(cert))
            except IdentityError:
                who = cert.subject.rfc4514_string()
            print(
                f"{path}: {who}, issued by {cert.issuer.rfc4514_string()}, "
                f"valid {_date(cert.not_valid_before_utc)} to {_date(cert.not_valid_after_utc)}, "
                f"sha256 {cert.fingerprint(SHA256()).hex()[:16]}"
            )
    if not found:
        raise CommandError(f"{args.dir}: neither {CA_FILE} nor {CERT_FILE} here")
    if (args.dir / CERT_FILE).exists():
        try:
            files = load_tls_dir(args.dir, now=datetime.now(UTC))
        except TlsError as exc:
            raise CommandError(f"not usable: {exc}") from None
        print(f"usable now as {files.identity}, trusting {len(files.trusted)} CA(s)")
    return 0


def _date(when: datetime) -> str:
    return f"{when:%Y-%m-%d %H:%M} UTC"
