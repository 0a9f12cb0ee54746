"""The cluster CA: made once, kept offline, used to issue node and supernode certificates.

A CA directory holds ``ca.pem`` (the CA certificate: give it to every node) and
``ca-key.pem`` (its private key: whoever holds it can make supernodes; keep it offline).
A node's TLS directory holds what ``issue`` wrote for it (see ``swarmpull.edges.tls.files``).

Keys are ECDSA P-256: on this machine a mutual-TLS handshake costs the server the same CPU
with P-256 and Ed25519 keys (within a few percent, ``swarmpull benchmarks tls``), and P-256
is the one every TLS stack, HSM and KMS speaks.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from swarmpull.core.identity import (
    CA_DAYS,
    NODE_DAYS,
    ORGANIZATION,
    Identity,
    Role,
    check_host,
    check_name,
)
from swarmpull.edges.tls.files import CA_FILE, CERT_FILE, KEY_FILE, TlsError, read_certificates, spki

CA_KEY_FILE = "ca-key.pem"
SKEW = timedelta(minutes=5)  # certificates start a little in the past: clocks differ


PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class KeyType(enum.Enum):
    """ECDSA P-256, the default; Ed25519 exists so that ``swarmpull benchmarks tls`` can
    measure the choice."""

    P256 = "p256"
    ED25519 = "ed25519"


def new_key(kind: KeyType = KeyType.P256) -> PrivateKey:
    if kind is KeyType.ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def _hash_for(key: PrivateKey) -> hashes.SHA256 | None:
    """The digest a signature with ``key`` uses (Ed25519 names none: it hashes itself)."""
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def general_name(host: str) -> x509.GeneralName:
    """An extra name for a certificate (``--host``): an IP address or a DNS name."""
    host = check_host(host)
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A node's new certificate and private key."""

    identity: Identity
    certificate: x509.Certificate
    key: PrivateKey


class CertificateAuthority:
    """A CA certificate and its key; ``issue`` signs node and supernode certificates."""

    def __init__(self, certificate: x509.Certificate, key: PrivateKey) -> None:
        self.certificate = certificate
        self.key = key

    def __repr__(self) -> str:
        return f"<CertificateAuthority {self.certificate.subject.rfc4514_string()}>"

    @classmethod
    def generate(
        cls, *, now: datetime, days: int = CA_DAYS, key_type: KeyType = KeyType.P256
    ) -> CertificateAuthority:
        """A new CA (and the key type of the certificates it issues). Its name carries a
        random tag, so that during a rotation the old and the new CA, trusted side by
        side, have different names."""
        key = new_key(key_type)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                x509.NameAttribute(NameOID.COMMON_NAME, f"swarmpull cluster CA {secrets.token_hex(4)}"),
            ]
        )
        public = key.public_key()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - SKEW)
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, _hash_for(key))
        )
        return cls(certificate, key)

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        """The CA kept in ``directory`` (``ca.pem`` and ``ca-key.pem``)."""
        certs = read_certificates(directory / CA_FILE)
        if len(certs) != 1:
            raise TlsError(f"{directory / CA_FILE}: a CA directory holds one certificate, not {len(certs)}")
        key_path = directory / CA_KEY_FILE
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except FileNotFoundError:
            raise TlsError(f"{key_path}: no CA key here (made by 'swarmpull ca init')") from None
        except (ValueError, TypeError) as exc:
            raise TlsError(f"{key_path}: not an unencrypted PEM private key ({exc})") from None
        if not isinstance(key, PrivateKey) or spki(key.public_key()) != spki(certs[0].public_key()):
            raise TlsError(f"{key_path} is not the key of {directory / CA_FILE}")
        return cls(certs[0], key)

    def save(self, directory: Path, *, force: bool = False) -> list[Path]:
        return write_files(
            directory,
            {CA_FILE: (cert_pem(self.certificate), 0o644), CA_KEY_FILE: (key_pem(self.key), 0o600)},
            force=force,
        )

    def issue(
        self,
        name: str,
        role: Role = Role.NODE,
        *,
        now: datetime,
        days: int | None = None,
        hosts: Sequence[str] = (),
    ) -> IssuedCertificate:
        """A certificate for ``name`` in ``role``, valid ``days`` from ``now`` (by default
        ``NODE_DAYS``, or until the CA expires if that is sooner).

        Subject ``O=swarmpull, OU=<role>, CN=<name>``; DNS names: the identity's TLS names
        (``swarmpull.core.identity``) and ``hosts`` (addresses or names for tools that
        check the host, such as curl or a metrics scraper)."""
        identity = Identity(check_name(name), role)
        extra = [general_name(h) for h in hosts]
        ca_until = self.certificate.not_valid_after_utc
        not_after = (
            min(now + timedelta(days=NODE_DAYS), ca_until) if days is None else now + timedelta(days=days)
        )
        if not_after > ca_until:
            raise TlsError(
                f"a certificate for {days} days would outlive the CA "
                f"(it expires {self.certificate.not_valid_after_utc:%Y-%m-%d})"
            )
        key = new_key(KeyType.ED25519 if isinstance(self.key, ed25519.Ed25519PrivateKey) else KeyType.P256)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role.value),
                x509.NameAttribute(NameOID.COMMON_NAME, name),
            ]
        )
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in identity.tls_names()]
        names += [n for n in extra if n not in names]
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            # Every component is a server and a client: it serves pieces and fetches them.
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, _hash_for(self.key))
        )
        return IssuedCertificate(identity, certificate, key)


def write_tls_dir(
    directory: Path,
    issued: IssuedCertificate,
    trusted: Iterable[x509.Certificate],
    *,
    force: bool = False,
) -> list[Path]:
    """Write a node's TLS directory: ``ca.pem`` (the CAs it trusts, in order, once
    each), ``cert.pem`` and ``key.pem`` (mode 0600)."""
    bundle: dict[bytes, x509.Certificate] = {}
    for cert in trusted:
        bundle.setdefault(cert.fingerprint(hashes.SHA256()), cert)
    return write_files(
        directory,
        {
            CA_FILE: (cert_pem(*bundle.values()), 0o644),
            CERT_FILE: (cert_pem(issued.certificate), 0o644),
            KEY_FILE: (key_pem(issued.key), 0o600),
        },
        force=force,
    )


def write_files(directory: Path, files: dict[str, tuple[bytes, int]], *, force: bool) -> list[Path]:
    """Write ``files`` (name: data, mode) into ``directory``. Each is written whole under a
    temporary name with its final mode (so a key is never readable by others, whatever the
    umask); only when all are written are they renamed into place."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    paths = [directory / name for name in files]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise TlsError(f"{', '.join(existing)} already exist (--force replaces them)")
    temps: list[Path] = []
    try:
        for path, (data, mode) in zip(paths, files.values(), strict=True):
            temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            temps.append(temp)
            try:
                os.fchmod(fd, mode)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
        for temp, path in zip(temps, paths, strict=True):
            os.replace(temp, path)
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)
    return paths


def throwaway_cluster(
    root: Path, members: Iterable[tuple[str, Role]], *, now: datetime, days: int = 7
) -> dict[str, Path]:
    """A new CA in ``root/ca`` and a TLS directory ``root/<name>`` for each member (name,
    role), valid ``days``: for tests and load tests, which have no operator to ask."""
    ca = CertificateAuthority.generate(now=now, days=days + 1)
    ca.save(root / "ca")
    dirs = {}
    for name, role in members:
        dirs[name] = root / name
        write_tls_dir(dirs[name], ca.issue(name, role, now=now, days=days), [ca.certificate])
    return dirs
