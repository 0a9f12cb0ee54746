"""Sets of pieces as Python ints (bit ``p`` set: piece ``p`` is in), and their wire form.

A bitset makes "what could this node get from that one" one ``&`` however many pieces a
blob has, and its wire form is ``count / 8`` bytes: piece ``p`` is bit ``p % 8`` of byte
``p // 8`` (little-endian, so the int and the bytes convert directly).
"""

from __future__ import annotations

import base64
import binascii
import random

_BYTE_BITS = [tuple(b for b in range(8) if value >> b & 1) for value in range(256)]


class BitfieldError(ValueError):
    """A bitfield that does not fit the blob it claims to describe."""


def full(count: int) -> int:
    """Every piece of a blob of ``count`` pieces."""
    return (1 << count) - 1


def bits(mask: int) -> list[int]:
    """The pieces in a bitset, lowest first (a byte at a time: pieces run to thousands)."""
    data = mask.to_bytes((mask.bit_length() + 7) // 8, "little")
    return [i * 8 + b for i, value in enumerate(data) if value for b in _BYTE_BITS[value]]


def of(pieces: list[int] | range) -> int:
    mask = 0
    for piece in pieces:
        mask |= 1 << piece
    return mask


def random_bit(mask: int, rng: random.Random) -> int:
    """A piece of a non-empty bitset at a random place: the first set bit at or after a
    random position (wrapping), so a choice is O(count / 64). Not uniform (a piece after a
    long gap is likelier), which spreading requesters over pieces does not mind."""
    if not mask:
        raise ValueError("no piece to choose from an empty set")
    start = int(rng.random() * mask.bit_length())
    upper = mask >> start
    if upper:
        return start + ((upper & -upper).bit_length() - 1)
    return (mask & -mask).bit_length() - 1


def encode(mask: int, count: int) -> bytes:
    return mask.to_bytes((count + 7) // 8, "little")


def decode(data: bytes, count: int) -> int:
    """A bitset from its wire form; BitfieldError if it is the wrong length or names
    pieces the blob does not have."""
    if len(data) != (count + 7) // 8:
        raise BitfieldError(f"a bitfield of {count} pieces is {(count + 7) // 8} bytes, not {len(data)}")
    mask = int.from_bytes(data, "little")
    if mask >> count:
        raise BitfieldError(f"bitfield names pieces beyond the blob's {count}")
    return mask


def to_text(mask: int, count: int) -> str:
    """The wire form in base64, for JSON."""
    return base64.b64encode(encode(mask, count)).decode()


def from_text(text: str, count: int) -> int:
    try:
        data = base64.b64decode(text.encode(), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise BitfieldError("bitfield is not base64") from None
    return decode(data, count)
