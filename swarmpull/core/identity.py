"""Who is at the other end of a cluster connection: a name and a role, as the cluster CA
certified them, and the TLS names that carry them in a certificate.

A node certificate's subject is ``O=swarmpull, OU=<role>, CN=<name>``: the name is the
node's peer id (or the supernode's name), the role ``node`` or ``supernode``. The CA signed
both, so a node cannot claim another name or the supernode role.

Nodes reach each other at whatever address they advertise (often an IP that changes), so
certificates do not name addresses. Each carries a DNS name built from its name and role
under the reserved domain ``swarmpull.invalid`` (``.invalid`` never resolves: these are
identities, not hosts): ``tls_name(name, role)``. A client that expects node X at some
address connects with ``server_hostname=tls_name(X, NODE)``, and OpenSSL's own hostname
check refuses any other certificate during the handshake, before a byte of the request
is sent. Every supernode certificate also carries ``SUPERNODE_TLS_NAME``: a peer that
talks to "a supernode of this cluster" (any replica) expects that name.
"""

from __future__ import annotations

import base64
import enum
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from swarmpull.core.fields import PEER_ID_RE

TLS_DOMAIN = "swarmpull.invalid"
SUPERNODE_TLS_NAME = f"supernode.{TLS_DOMAIN}"
ORGANIZATION = "swarmpull"
MAX_NAME = 64  # ub-common-name: peer ids may be longer (128), certified names may not
CA_DAYS = 3650  # how long a CA is valid, by default
NODE_DAYS = 365  # how long a node or supernode certificate is valid, by default
# A name that is one lowercase DNS label is used as it is; any other is base32-encoded.
_PLAIN_LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
_ENCODED_LABEL = "x"
_DNS_LABEL_RE = re.compile(r"^(?:\*|[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)\Z")


class IdentityError(ValueError):
    """A certificate or name that does not make a valid cluster identity."""


class Role(enum.Enum):
    """What a certificate allows its holder to be. A supernode may also act as a node
    (its seed serves pieces); a node may never act as a supernode."""

    NODE = "node"
    SUPERNODE = "supernode"

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls(text)
        except ValueError:
            raise IdentityError(f"role must be node or supernode, not {text!r}") from None


def check_name(name: str) -> str:
    """``name`` if it is a valid node name, else IdentityError: a peer id (the same rule)
    of at most 64 characters, the most a certificate's common name holds (RFC 5280)."""
    if not isinstance(name, str) or not PEER_ID_RE.fullmatch(name) or len(name) > MAX_NAME:
        # fullmatch: PEER_ID_RE.match() takes "x\n"
        raise IdentityError(
            f"invalid name {name!r}: letters, digits and . _ : - (at most {MAX_NAME}, starting "
            "with a letter or digit), like a peer id"
        )
    return name


def tls_name(name: str, role: Role) -> str:
    """The DNS name a certificate for ``name`` in ``role`` carries, and a client expects.

    ``<name>.<role>.swarmpull.invalid`` when the name is one lowercase DNS label (uuid
    peer ids, ``node-7``); otherwise the name in lowercase base32, in labels of at most 63
    characters, then ``x``: ``<b32>[.<b32>...].x.<role>.swarmpull.invalid``. The mapping is
    one-to-one (plain names give four labels, encoded ones at least five, and base32 keeps
    ``Node1`` and ``node1`` apart although DNS names compare without case), so a name
    check on the TLS name is a check on the node's name.
    """
    check_name(name)
    if _PLAIN_LABEL_RE.match(name):
        return f"{name}.{role.value}.{TLS_DOMAIN}"
    encoded = base64.b32encode(name.encode()).decode().rstrip("=").lower()
    labels = [encoded[i : i + 63] for i in range(0, len(encoded), 63)]
    return ".".join([*labels, _ENCODED_LABEL, role.value, TLS_DOMAIN])


def check_host(text: str) -> str:
    """An extra name for a certificate: an IP address, or a DNS name (lowercased) outside
    the domain of identities; IdentityError otherwise."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    host = text.strip().lower().rstrip(".")
    if not host or len(host) > 253 or not all(_DNS_LABEL_RE.match(label) for label in host.split(".")):
        raise IdentityError(f"not an IP address or DNS name: {text!r}")
    if host == TLS_DOMAIN or host.endswith("." + TLS_DOMAIN):
        raise IdentityError(f"{text!r} is in {TLS_DOMAIN}, the domain of node identities")
    return host


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated party: its name (a peer id, or a supernode's name) and role."""

    name: str
    role: Role

    @property
    def is_supernode(self) -> bool:
        return self.role is Role.SUPERNODE

    def tls_names(self) -> list[str]:
        """The DNS names a certificate for this identity carries."""
        names = [tls_name(self.name, self.role)]
        if self.is_supernode:
            names.append(SUPERNODE_TLS_NAME)
        return names

    def __str__(self) -> str:
        return f"{self.role.value} {self.name}"


def identity_from_fields(
    common_names: Iterable[str], units: Iterable[str], dns_names: Iterable[str]
) -> Identity:
    """The identity of a certificate from its subject's CN and OU and its DNS names:
    exactly one of each, and the certificate must carry the TLS name of that name and role,
    so the name a client checked and the name a server reads are the same."""
    cns, ous = list(common_names), list(units)
    if len(cns) != 1:
        raise IdentityError(f"the certificate must name one node (CN), not {len(cns)}")
    if len(ous) != 1:
        raise IdentityError(f"the certificate must carry one role (OU), not {len(ous)}")
    identity = Identity(check_name(cns[0]), Role.parse(ous[0]))
    expected = tls_name(identity.name, identity.role)
    if expected not in {d.lower() for d in dns_names}:
        raise IdentityError(f"the certificate of {identity} lacks its TLS name {expected}")
    return identity


def identity_from_peercert(cert: dict[str, Any] | None) -> Identity:
    """The identity in a certificate as ``ssl.SSLSocket.getpeercert()`` decodes it (only
    ever a certificate OpenSSL verified against the cluster CA)."""
    if not cert:
        raise IdentityError("no certificate")
    cns, ous = [], []
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                cns.append(value)
            elif key == "organizationalUnitName":
                ous.append(value)
    dns = [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]
    return identity_from_fields(cns, ous, dns)
