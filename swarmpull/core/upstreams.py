"""Which upstreams the supernode may read: the decision against server-side request forgery.

Anyone who reaches the supernode's API can name a URL for it to read, and read the bytes
back from the seed; without a rule, that is a way into every service the supernode can
reach (a cloud metadata endpoint, an admin port on loopback, the cluster's Redis). The
rule: any public address is allowed; loopback, link-local, private (RFC 1918, IPv6
unique-local), shared (CGNAT, 100.64.0.0/10), unspecified, multicast and the other
special-purpose ranges are refused unless an operator's pattern (``--upstream-allow``)
names them.

A pattern is one of:

- a host name, ``registry.internal``, or all names under a domain, ``*.corp.example``
  (not the domain itself);
- an IP address, ``10.0.0.5`` or ``::1`` (``[::1]`` with a port), or a network,
  ``10.0.0.0/8``, which match the address the name resolved to;
- any of the above but a network with ``:PORT``, which then matches that port only;
- ``public``: any public address (the default when no pattern is given). Given patterns
  replace the default, so ``--upstream-allow registry.internal`` alone allows that host
  only, and ``--upstream-allow public --upstream-allow registry.internal`` adds it.

The decision is taken on the address a connection is about to be made to (``decide``),
for every connection and every redirect hop, so a name that resolves to a public address
once and to loopback the next time (DNS rebinding) is caught when it matters. Sans-IO:
resolving and connecting are the caller's (``swarmpull.edges.upstream_guard``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from swarmpull.core.tasks import is_host

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
FLAG = "--upstream-allow"
PUBLIC = "public"


class PatternError(ValueError):
    """An ``--upstream-allow`` pattern that does not parse."""


@dataclass(frozen=True, slots=True)
class HostPattern:
    """One ``--upstream-allow`` pattern, parsed."""

    text: str
    name: str | None = None  # an exact host name, or the suffix after "*." with ``wildcard``
    wildcard: bool = False
    network: Network | None = None  # an address (a /32 or /128) or a network
    port: int | None = None

    def matches(self, host: str, port: int, address: Address) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            return address in self.network
        name = host.lower().rstrip(".")
        if self.wildcard:
            return name.endswith("." + (self.name or ""))
        return name == self.name


def parse_pattern(text: str) -> HostPattern:
    """A pattern as ``--upstream-allow`` takes it; PatternError if it does not parse."""
    raw = text.strip().lower()
    if not raw:
        raise PatternError("an empty --upstream-allow pattern")
    if "/" in raw:  # a network: no port
        try:
            return HostPattern(text, network=ipaddress.ip_network(raw, strict=False))
        except ValueError:
            raise PatternError(f"not a network: {text!r}") from None
    host, port = _split_port(raw, text)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return HostPattern(text, network=ipaddress.ip_network(address), port=port)
    wildcard = host.startswith("*.")
    name = host[2:] if wildcard else host
    name = name.rstrip(".")
    if not name or "*" in name or not is_host(name):
        raise PatternError(f"not a host name, *.domain, address or network: {text!r}")
    return HostPattern(text, name=name, wildcard=wildcard, port=port)


def _split_port(raw: str, text: str) -> tuple[str, int | None]:
    if raw.startswith("["):  # [v6]:port or [v6]
        host, closed, rest = raw[1:].partition("]")
        if not closed:
            raise PatternError(f"no closing bracket in {text!r}")
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise PatternError(f"not [address]:port: {text!r}")
        return host, _port(rest[1:], text)
    if raw.count(":") == 1:  # name:port or v4:port (a bare v6 address has several)
        host, _, port = raw.partition(":")
        return host, _port(port, text)
    return raw, None


def _port(text: str, pattern: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise PatternError(f"not a port in {pattern!r}")
    return int(text)


def is_public(address: Address) -> bool:
    """A globally routable unicast address: not loopback, link-local, private, shared
    (CGNAT), unspecified, multicast, reserved or documentation."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is loopback
    return address.is_global and not address.is_multicast


class UpstreamAllow:
    """The ``--upstream-allow`` rule: ``decide`` says whether one connection may be made."""

    def __init__(self, patterns: tuple[str, ...] = ()) -> None:
        self.patterns = tuple(parse_pattern(p) for p in patterns if p.strip().lower() != PUBLIC)
        self.public = not patterns or any(p.strip().lower() == PUBLIC for p in patterns)

    def __repr__(self) -> str:
        named = [p.text for p in self.patterns] + ([PUBLIC] if self.public else [])
        return f"<UpstreamAllow {' '.join(named)}>"

    def decide(self, host: str, port: int, address: str | Address) -> str | None:
        """None if a connection to ``host:port`` at ``address`` is allowed, else why not
        (naming the host and the flag that would allow it)."""
        try:
            ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        except ValueError:
            return f"upstream {host}:{port} resolved to {address!r}, not an address"
        if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
            ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
        if any(p.matches(host, port, ip) for p in self.patterns):
            return None
        if self.public and is_public(ip):
            return None
        where = host if str(ip) == host else f"{host} ({ip})"
        if not self.public:
            return f"upstream {where} port {port} is not allowed by {FLAG} (add {FLAG} {_suggest(host, ip)})"
        return (
            f"upstream {where} is a {kind_of(ip)} address, refused unless allowed "
            f"explicitly: {FLAG} {_suggest(host, ip)}"
        )


def kind_of(address: Address) -> str:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for kind in ("loopback", "link_local", "multicast", "unspecified", "private"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    if address in ipaddress.ip_network("100.64.0.0/10"):
        return "shared (CGNAT)"
    return "non-public"


def _suggest(host: str, address: Address) -> str:
    return f"[{host}]" if isinstance(address, ipaddress.IPv6Address) and host == str(address) else host
