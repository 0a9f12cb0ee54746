"""Bencoding (BEP 3): the encoding of torrents and of tracker answers.

``decode`` reads hostile bytes: it refuses anything that is not exactly one well-formed
value (leading zeros, negative zero, unsorted or repeated dictionary keys, trailing
bytes), nests at most ``MAX_DEPTH`` deep and never reads past the input, so a torrent or
an announce from anyone is parsed or refused with a ``BencodeError``, nothing else.
"""

from __future__ import annotations

from typing import Any

MAX_DEPTH = 32
_DIGITS = frozenset(b"0123456789")


class BencodeError(ValueError):
    """Bytes that are not one well-formed bencoded value."""


def encode(value: Any) -> bytes:
    """``value`` (int, bytes, str, list, dict with bytes or str keys) bencoded."""
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


def _encode(value: Any, out: list[bytes]) -> None:
    if isinstance(value, bool):
        raise TypeError("bencoding has no booleans")
    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        out.append(b"%d:" % len(data))
        out.append(data)
    elif isinstance(value, str):
        _encode(value.encode(), out)
    elif isinstance(value, list | tuple):
        out.append(b"l")
        for item in value:
            _encode(item, out)
        out.append(b"e")
    elif isinstance(value, dict):
        out.append(b"d")
        keys = {(k.encode() if isinstance(k, str) else bytes(k)): v for k, v in value.items()}
        for key in sorted(keys):
            _encode(key, out)
            _encode(keys[key], out)
        out.append(b"e")
    else:
        raise TypeError(f"cannot bencode {type(value).__name__}")


def decode(data: bytes) -> Any:
    """The one value ``data`` holds: ints, bytes, lists, dicts with bytes keys."""
    value, end = _decode(memoryview(data), 0, 0)
    if end != len(data):
        raise BencodeError(f"{len(data) - end} bytes after the value")
    return value


def _decode(data: memoryview, pos: int, depth: int) -> tuple[Any, int]:
    if depth > MAX_DEPTH:
        raise BencodeError(f"nested deeper than {MAX_DEPTH}")
    if pos >= len(data):
        raise BencodeError("truncated")
    lead = data[pos]
    if lead == ord("i"):
        end = _find(data, ord("e"), pos + 1)
        text = bytes(data[pos + 1 : end])
        body = text[1:] if text.startswith(b"-") else text
        if not body or not set(body) <= _DIGITS or (body[0] == ord("0") and (len(body) > 1 or text != body)):
            raise BencodeError(f"bad integer {text[:24]!r}")
        return int(text), end + 1
    if lead in _DIGITS:
        colon = _find(data, ord(":"), pos)
        text = bytes(data[pos:colon])
        if not set(text) <= _DIGITS or (len(text) > 1 and text[0] == ord("0")) or len(text) > 12:
            raise BencodeError(f"bad string length {text[:24]!r}")
        end = colon + 1 + int(text)
        if end > len(data):
            raise BencodeError("truncated string")
        return bytes(data[colon + 1 : end]), end
    if lead == ord("l"):
        items = []
        pos += 1
        while pos < len(data) and data[pos] != ord("e"):
            item, pos = _decode(data, pos, depth + 1)
            items.append(item)
        if pos >= len(data):
            raise BencodeError("truncated list")
        return items, pos + 1
    if lead == ord("d"):
        out: dict[bytes, Any] = {}
        last: bytes | None = None
        pos += 1
        while pos < len(data) and data[pos] != ord("e"):
            key, pos = _decode(data, pos, depth + 1)
            if not isinstance(key, bytes):
                raise BencodeError("a dictionary key must be a string")
            if last is not None and key <= last:
                raise BencodeError("dictionary keys must be sorted and unique")
            out[key], pos = _decode(data, pos, depth + 1)
            last = key
        if pos >= len(data):
            raise BencodeError("truncated dictionary")
        return out, pos + 1
    raise BencodeError(f"unexpected byte {bytes([lead])!r} at {pos}")


def _find(data: memoryview, byte: int, start: int) -> int:
    for i in range(start, min(len(data), start + 64)):
        if data[i] == byte:
            return i
    raise BencodeError("truncated or overlong number")
