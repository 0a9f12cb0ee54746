"""The little HTTP/1.1 the piece client speaks, sans-IO: a request for a piece, and the
head of the answer parsed into a validated ``ResponseHead``.

Sources are untrusted: a head longer than ``MAX_HEAD``, a malformed status line or header,
a body framed by anything but one ``Content-Length``, are ``WireError``s, never guesses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_HEAD = 16 * 1024
MAX_BODY = 1 << 40
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-5][0-9]{2})(?: [\x09\x20-\x7e\x80-\xff]*)?")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE = re.compile(rb"[\x09\x20-\x7e\x80-\xff]*")


class WireError(ValueError):
    """An answer that is not well-formed HTTP/1.1 as we speak it."""


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """A parsed status line and headers (names lower-cased)."""

    status: int
    headers: dict[str, str]
    content_length: int | None
    keep_alive: bool


def piece_request(host: str, path: str, headers: dict[str, str]) -> bytes:
    """``GET path`` with ``headers``; names and values must already be safe."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items())]
    for line in lines:
        if "\r" in line or "\n" in line:
            raise ValueError(f"a line break in a request line: {line!r}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def head_end(buffer: bytes | bytearray | memoryview, length: int) -> int:
    """The offset just past the blank line ending a head in ``buffer[:length]``, or -1."""
    end = bytes(buffer[:length]).find(b"\r\n\r\n")
    return -1 if end < 0 else end + 4


def parse_head(raw: bytes) -> ResponseHead:
    """Parse a response head (status line to the blank line included). Raises WireError."""
    if len(raw) > MAX_HEAD:
        raise WireError(f"a response head of {len(raw)} bytes")
    if not raw.endswith(b"\r\n\r\n"):
        raise WireError("a response head must end with a blank line")
    lines = raw[:-4].split(b"\r\n")
    match = _STATUS_LINE.fullmatch(lines[0])
    if match is None:
        raise WireError(f"not an HTTP/1.x status line: {lines[0][:60]!r}")
    minor, status = match.group(1), int(match.group(2))
    headers: dict[str, str] = {}
    lengths: set[bytes] = set()
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise WireError(f"a malformed header line: {line[:60]!r}")  # also folded lines
        value = value.strip(b" \t")
        if not _VALUE.fullmatch(value):
            raise WireError(f"a control character in header {name[:40]!r}")
        key = name.decode("ascii").lower()
        if key == "content-length":
            lengths.add(value)
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    if "transfer-encoding" in headers:
        raise WireError("a body framed by Transfer-Encoding (we need Content-Length)")
    content_length = None
    if lengths:
        (value,) = lengths if len(lengths) == 1 else (b"",)
        if not value.isdigit() or len(value) > 13 or int(value) > MAX_BODY:
            raise WireError(f"a bad Content-Length {b', '.join(sorted(lengths))[:60]!r}")
        content_length = int(value)
    tokens = {t.strip() for t in headers.get("connection", "").lower().split(",")}
    keep_alive = "keep-alive" in tokens if minor == b"0" else "close" not in tokens
    return ResponseHead(status, headers, content_length, keep_alive)
