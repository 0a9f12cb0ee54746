"""The piece map a source sends a requester: what it holds, and the signed sha256 of the
pieces the requester does not know yet (``swarmpull.core.signing``).

``GET /pieces/<task>/map?known=<bitfield>&after=<version>&wait=<seconds>`` answers, in
binary:

    "SPM1" | count (u32) | version (u32) | bitfield (count / 8 bytes) |
    n (u32) | n piece statements (108 bytes each)

``version`` is the number of pieces the source holds: a requester that saw version V
asks with ``after=V`` and the source answers when it holds more (or ``wait`` runs out).
Every field is checked on arrival; statements are checked against the task's keys by
the requester before it believes a single sha256.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from swarmpull.core.bitfield import decode, encode
from swarmpull.core.signing import STATEMENT_SIZE, PieceStatement

MAGIC = b"SPM1"
_HEAD = struct.Struct(">4sII")
_COUNT = struct.Struct(">I")


class MapError(ValueError):
    """A piece map that does not have the documented form."""


@dataclass(slots=True)
class PieceMap:
    count: int
    version: int
    bits: int
    statements: list[PieceStatement] = field(default_factory=list)

    def encode(self) -> bytes:
        parts = [_HEAD.pack(MAGIC, self.count, self.version), encode(self.bits, self.count)]
        parts.append(_COUNT.pack(len(self.statements)))
        parts.extend(s.encode() for s in self.statements)
        return b"".join(parts)


def decode_map(data: bytes, count: int) -> PieceMap:
    """A piece map of a blob of ``count`` pieces; MapError if it is not one."""
    head = _HEAD.size
    width = (count + 7) // 8
    if len(data) < head + width + _COUNT.size:
        raise MapError("piece map too short")
    magic, declared, version = _HEAD.unpack_from(data)
    if magic != MAGIC or declared != count:
        raise MapError(f"not a piece map of {count} pieces")
    try:
        bits = decode(data[head : head + width], count)
    except ValueError as exc:
        raise MapError(str(exc)) from None
    if version != bits.bit_count():
        raise MapError("piece map version does not match its bitfield")
    (n,) = _COUNT.unpack_from(data, head + width)
    start = head + width + _COUNT.size
    if n > count or len(data) != start + n * STATEMENT_SIZE:
        raise MapError("piece map statements do not fit")
    statements = []
    for i in range(n):
        statement = PieceStatement.decode(data[start + i * STATEMENT_SIZE : start + (i + 1) * STATEMENT_SIZE])
        if statement.piece >= count:
            raise MapError(f"statement for piece {statement.piece} of {count}")
        statements.append(statement)
    return PieceMap(count, version, bits, statements)
