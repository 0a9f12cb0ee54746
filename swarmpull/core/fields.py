"""Readers of fields in untrusted JSON bodies (the supernode API's, and the other wire
types built on it): each checks a field's type, bounds and pattern, and raises
``ProtocolError`` naming the field, which servers answer as 400.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit

from swarmpull.core.tasks import is_host, validate_task_id

PEER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
B64_RE = re.compile(r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$")
# The patterns above are also the OpenAPI documents' (``schemas``); they are matched with
# ``fullmatch``: Python's ``$`` also matches before a final newline.
MAX_PIECES = 1 << 20
MAX_BITFIELD_TEXT = (MAX_PIECES // 8) * 4 // 3 + 4
MAX_PARENTS = 64


class ProtocolError(ValueError):
    """A request body that does not have the documented shape (answered with ``status``:
    400, or 413 for a body too large, 408 for one too slow; ``code`` names it)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status

    @property
    def code(self) -> str:
        return {408: "REQUEST_TIMEOUT", 413: "TOO_LARGE"}.get(self.status, "BAD_REQUEST")


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return value


def _optional_obj(value: Any, what: str) -> dict[str, Any]:
    """An object that may be absent (or null): then empty."""
    return {} if value is None else _obj(value, what)


def _list(body: dict[str, Any], key: str, most: int, what: str) -> list[Any]:
    """A list of at most ``most`` items that may be absent (or null): then empty."""
    value = body.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > most:
        raise ProtocolError(f"{key!r} must be a list of at most {most} {what}")
    return value


def _str(body: dict[str, Any], key: str, *, optional: bool = False, limit: int = 8192) -> Any:
    value = body.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ProtocolError(f"{key!r} must be a non-empty string of at most {limit} characters")
    return value


def _int(body: dict[str, Any], key: str, lo: int, hi: int, default: int | None = None) -> int:
    value = body.get(key, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON has one kind of number: 2.0 is the integer 2
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ProtocolError(f"{key!r} must be an integer from {lo} to {hi}")
    return value


def _float(body: dict[str, Any], key: str, lo: float, hi: float, default: float) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise ProtocolError(f"{key!r} must be a number from {lo} to {hi}")
    return float(value)


def _bitfield(body: dict[str, Any], key: str) -> str:
    """A bitfield in base64; its length is checked against the blob when it is decoded."""
    value = body.get(key, "")
    if not isinstance(value, str) or len(value) > MAX_BITFIELD_TEXT or not B64_RE.fullmatch(value):
        raise ProtocolError(f"{key!r} must be a bitfield in base64")
    return value


def _peer_id(body: dict[str, Any], key: str = "peer_id") -> str:
    value = _str(body, key, limit=128)
    if not PEER_ID_RE.fullmatch(value):
        raise ProtocolError(f"{key!r} may hold letters, digits and . _ : - (at most 128)")
    return value


def _peer_ids(body: dict[str, Any], key: str) -> list[str]:
    value = _list(body, key, MAX_PARENTS, "peer ids")
    for item in value:
        if not isinstance(item, str) or not PEER_ID_RE.fullmatch(item):
            raise ProtocolError(f"{key!r} must hold peer ids")
    return value


def _task_id(value: Any, key: str) -> str:
    try:
        return validate_task_id(value if isinstance(value, str) else "")
    except ValueError:
        raise ProtocolError(f"{key!r} must be a task id (sha256-<hex> or url-<hex>)") from None


def parse_address(value: Any) -> str | None:
    """A node's advertised address: ``scheme://host:port`` and nothing else (no path, no
    query, no user info), so nobody can make other nodes send requests anywhere else."""
    if value is None:
        return None
    text = value if isinstance(value, str) else ""
    try:
        parts = urlsplit(text.rstrip("/"))
        port = parts.port
    except ValueError:
        port = None
        parts = urlsplit("")
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or not is_host(parts.hostname)
        or port is None
        or parts.path
        or parts.query
        or parts.fragment
        or "@" in parts.netloc
    ):
        raise ProtocolError("'address' must be http(s)://HOST:PORT (no path, query or user info) or null")
    return f"{parts.scheme}://{parts.netloc}"


def node_ip(source: str | None, loopback: bool = False) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The IP a node is reached at: the one its request came from (``source``; an
    IPv4-mapped IPv6 address as IPv4, a zone dropped). A loopback source only when
    ``loopback`` (a cluster on one host): else it is the supernode's own host (a node
    beside it, or a proxy in front), and its ports are not the node's. ProtocolError
    when the source is unknown or names no node's host."""
    try:
        ip = ipaddress.ip_address((source or "").split("%")[0])
    except ValueError:
        raise ProtocolError("the address this registration came from is unknown") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified or (ip.is_loopback and not loopback):
        raise ProtocolError(
            f"a request from {ip} names no node's host (a proxy in front of the supernode?): "
            "run the supernode with --node-addresses advertised"
        )
    return ip


def at_source(address: str, source: str | None, loopback: bool = False) -> str:
    """``address`` (as ``parse_address`` returns it) with its host replaced by the IP the
    registration came from (``node_ip``): a node advertises its port, not its host, so
    it cannot point other nodes (or the supernode's checks) at a third host."""
    ip = node_ip(source, loopback)
    parts = urlsplit(address)
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    return f"{parts.scheme}://{host}:{parts.port}"


def parse_peer_id(text: str) -> str:
    if not PEER_ID_RE.fullmatch(text):
        raise ProtocolError(f"invalid peer id {text!r}")
    return text
