"""A node's TLS directory (``--tls-dir``), read and checked before any socket opens.

Three PEM files, written by ``swarmpull ca issue``:

- ``ca.pem``: the cluster CA certificates this node trusts, one or more. It holds two
  during a rotation (the old CA and the new one); peers signed by either are accepted.
- ``cert.pem``: this node's certificate, signed by one of those CAs. Its subject says the
  node's name and role (``swarmpull.core.identity``).
- ``key.pem``: this node's private key (mode 0600).

``load_tls_dir`` checks what a handshake would only find out later, with a message that
names the file: the certificate is current, signed by a trusted CA, matches the key and
names a valid identity in the role the daemon runs as.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from swarmpull.core.identity import Identity, IdentityError, Role, identity_from_fields

CA_FILE = "ca.pem"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"

log = logging.getLogger(__name__)


class TlsError(Exception):
    """A TLS directory, CA or certificate that cannot be used; the message says why."""


def read_certificates(path: Path) -> list[x509.Certificate]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TlsError(f"{path}: no such file") from None
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsError(f"{path}: not a PEM certificate") from None


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A checked TLS directory: who this node is and whom it trusts."""

    directory: Path
    identity: Identity
    certificate: x509.Certificate
    issuer: x509.Certificate  # the CA in ca.pem that signed the certificate
    trusted: tuple[x509.Certificate, ...]

    @property
    def ca_file(self) -> Path:
        return self.directory / CA_FILE

    @property
    def cert_file(self) -> Path:
        return self.directory / CERT_FILE

    @property
    def key_file(self) -> Path:
        return self.directory / KEY_FILE

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc


def identity_of_certificate(cert: x509.Certificate) -> Identity:
    """The identity a certificate names (IdentityError if it names none)."""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = names.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        dns = []
    return identity_from_fields(
        [str(a.value) for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)],
        [str(a.value) for a in cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATIONAL_UNIT_NAME)],
        dns,
    )


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def issuer_of(cert: x509.Certificate, trusted: tuple[x509.Certificate, ...]) -> x509.Certificate | None:
    """The CA among ``trusted`` whose signature ``cert`` carries."""
    for ca in trusted:
        if ca.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return ca
    return None


def check_current(cert: x509.Certificate, what: str, now: datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise TlsError(f"{what} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    if now > cert.not_valid_after_utc:
        raise TlsError(f"{what} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")


def load_tls_dir(directory: Path, *, now: datetime, role: Role | None = None) -> TlsFiles:
    """Read and check ``directory``; TlsError if this node could not take part in mutual
    TLS with it. ``role``: the role the daemon runs as; the certificate must have it."""
    ca_path, cert_path, key_path = directory / CA_FILE, directory / CERT_FILE, directory / KEY_FILE
    trusted = tuple(read_certificates(ca_path))
    for ca in trusted:
        if not is_ca(ca):
            raise TlsError(f"{ca_path}: {ca.subject.rfc4514_string()} is not a CA certificate")
    certs = read_certificates(cert_path)
    if len(certs) != 1:
        raise TlsError(f"{cert_path}: holds {len(certs)} certificates, not this node's one")
    cert = certs[0]
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except FileNotFoundError:
        raise TlsError(f"{key_path}: no such file") from None
    except (ValueError, TypeError) as exc:
        raise TlsError(f"{key_path}: not an unencrypted PEM private key ({exc})") from None
    if spki(key.public_key()) != spki(cert.public_key()):
        raise TlsError(f"{key_path} is not the key of {cert_path}")
    if key_path.stat().st_mode & 0o077:
        log.warning("%s can be read by others than its owner: chmod 600 it", key_path)
    issuer = issuer_of(cert, trusted)
    if issuer is None:
        raise TlsError(f"{cert_path} was not issued by a CA in {ca_path}")
    check_current(issuer, f"the CA that issued {cert_path}", now)
    check_current(cert, str(cert_path), now)
    try:
        identity = identity_of_certificate(cert)
    except IdentityError as exc:
        raise TlsError(f"{cert_path}: {exc}") from None
    if role is not None and identity.role is not role:
        raise TlsError(
            f"{cert_path} is a {identity.role.value} certificate; a {role.value} needs "
            f"a {role.value} certificate"
        )
    for ca in trusted:
        if now > ca.not_valid_after_utc:
            log.warning("%s: the CA %s has expired: drop it", ca_path, ca.subject.rfc4514_string())
    return TlsFiles(directory, identity, cert, issuer, trusted)


def spki(public_key: PublicKeyTypes) -> bytes:
    """A public key as DER bytes: two keys are the same key when these are equal."""
    der, info = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return public_key.public_bytes(der, info)
