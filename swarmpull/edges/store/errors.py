"""The piece store's errors."""

from __future__ import annotations


class StoreError(Exception):
    """Base of the store's errors."""


class StoreFull(StoreError):
    """No room for a blob within the cache size (or the free space), even after evicting."""


class StoreLocked(StoreError):
    """Another daemon uses this store's directory."""


class PieceCorrupt(StoreError):
    """A piece's bytes do not match the expected sha256 (or have the wrong length)."""


class StoreWriteError(StoreError):
    """The disk refused bytes (ENOSPC, EIO...): the piece or blob is not stored."""


class WriteCancelled(StoreError):
    """Another copy of the piece was verified first; this writer's bytes are not needed."""
