"""Piece geometry: how a blob is cut into pieces, and the rule that picks the piece size.

The rule: aim for about ``TARGET_PIECES`` pieces per blob, using a power of two between
``MIN_PIECE_SIZE`` (1 MiB) and ``MAX_PIECE_SIZE`` (64 MiB). A 100 MiB layer gets 1 MiB
pieces (100 pieces, enough to pipeline through a swarm), a 1 GiB layer 4 MiB pieces, a
16 GiB model file 64 MiB pieces; beyond 16 GiB the piece count grows instead. Every
party derives the same geometry from ``(size, piece_size)``, which the supernode fixes
when it creates the task.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_PIECE_SIZE = 1 << 20
MAX_PIECE_SIZE = 64 << 20
TARGET_PIECES = 256


def choose_piece_size(size: int, smallest: int = MIN_PIECE_SIZE) -> int:
    """The piece size for a blob of ``size`` bytes (see the module docstring); the load
    test's small images take a smaller ``smallest``."""
    piece = smallest
    while piece < MAX_PIECE_SIZE and piece * TARGET_PIECES < size:
        piece *= 2
    return piece


@dataclass(frozen=True, slots=True)
class PieceGeometry:
    """A blob of ``size`` bytes cut into pieces of ``piece_size`` (the last may be short)."""

    size: int
    piece_size: int

    def __post_init__(self) -> None:
        if self.size < 0 or self.piece_size <= 0:
            raise ValueError(f"invalid geometry size={self.size} piece_size={self.piece_size}")

    @property
    def count(self) -> int:
        return -(-self.size // self.piece_size)

    def offset(self, index: int) -> int:
        self._check(index)
        return index * self.piece_size

    def length(self, index: int) -> int:
        self._check(index)
        return min(self.piece_size, self.size - index * self.piece_size)

    def covering(self, start: int, end: int) -> range:
        """Indices of the pieces holding bytes ``[start, end)``."""
        if not 0 <= start <= end <= self.size:
            raise ValueError(f"byte range [{start}, {end}) outside blob of {self.size}")
        if start == end:
            return range(0)
        return range(start // self.piece_size, (end - 1) // self.piece_size + 1)

    def _check(self, index: int) -> None:
        if not 0 <= index < self.count:
            raise IndexError(f"piece {index} out of range 0..{self.count - 1}")
