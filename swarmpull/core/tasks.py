"""Task identity: one task per blob, keyed by content when the digest is known.

``sha256-<hex>`` for a blob with a known digest (the same layer fetched from two URLs is
one task), ``url-<sha256 of the URL>`` otherwise. Both parties compute the id the same way,
so a peer can find a task in its store before asking the supernode.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from urllib.parse import urlsplit, urlunsplit

from swarmpull.core.digest import Digest

TASK_ID_RE = re.compile(r"^(sha256|url)-[a-f0-9]{64}$")
# A DNS name in ASCII (an internationalized one in its xn-- form): labels of letters,
# digits, '-' and '_' (common in internal names), at most 63 each and 253 in all.
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?$")


def task_id_for(url: str, digest: Digest | None) -> str:
    if digest is not None:
        return f"sha256-{digest.hex}"
    return "url-" + hashlib.sha256(url.encode()).hexdigest()


def validate_task_id(text: str) -> str:
    if not TASK_ID_RE.fullmatch(text):
        raise ValueError(f"invalid task id {text!r}")
    return text


def is_host(host: str) -> bool:
    """``host`` (as ``urlsplit`` gives it, lowercased and without brackets) is an IP
    address or an ASCII DNS name: nothing an HTTP client would choke on or look up as
    garbage (spaces, control characters, empty labels, lone surrogates)."""
    if _HOSTNAME_RE.fullmatch(host):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def check_upstream_url(url: str) -> str:
    """``url`` if it is an absolute http(s) URL, else ValueError; the fragment is dropped."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError as exc:
        raise ValueError(f"not an http(s) URL ({exc}): {url!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    if not is_host(parts.hostname):
        raise ValueError(f"not a host name or address: {parts.hostname!r}")
    return urlunsplit((parts.scheme, parts.netloc, parts.path, parts.query, ""))


def redact_url(url: str) -> str:
    """``url`` without credentials or query string, safe for logs and metadata files."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]  # drop user:password@
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
