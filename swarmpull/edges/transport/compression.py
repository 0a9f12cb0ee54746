"""zstd on the wire, only when it pays.

Most layers are gzip already; uncompressed tars and model files are not. The sender
compresses a few samples of a piece at a fast level first and compresses the piece only
if the samples shrank by at least ``MIN_SAVING``; the decision and the compressed bytes
are cached per piece (many peers ask for the same piece). The receiver checks the frame's
declared size against the piece length before decompressing, so a hostile frame cannot
blow up memory, and the sha256 is checked on the decompressed bytes as always.
"""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict

import zstandard

SAMPLE = 16 * 1024
MIN_SAVING = 0.10
LEVEL = 3


class CompressionError(ValueError):
    """A compressed body that does not decode to a piece of the expected length."""


class PieceCompressor:
    """Decides, compresses and caches, per ``(task, piece)``; ``cache_bytes`` bounds memory."""

    def __init__(self, cache_bytes: int = 64 << 20) -> None:
        self._cache_bytes = cache_bytes
        self._cached = 0
        self._compressed: OrderedDict[tuple[str, int], bytes | None] = OrderedDict()

    async def compressed(self, task_id: str, piece: int, data: memoryview) -> bytes | None:
        """The piece compressed with zstd, or None when that would not pay."""
        key = (task_id, piece)
        if key in self._compressed:
            self._compressed.move_to_end(key)
            return self._compressed[key]
        result = None
        if worth_compressing(data):
            result = await asyncio.to_thread(_compress, data)
            if len(result) > len(data) * (1 - MIN_SAVING):
                result = None
        self._remember(key, result)
        return result

    async def compressed_region(
        self, task_id: str, piece: int, fd: int, offset: int, length: int
    ) -> bytes | None:
        """Like ``compressed``, for a piece in a file: only the samples are read to decide,
        so a piece that does not compress is never read into memory (it is sent with
        ``sendfile``)."""
        key = (task_id, piece)
        if key in self._compressed:
            self._compressed.move_to_end(key)
            return self._compressed[key]
        result = await asyncio.to_thread(_compress_region, fd, offset, length)
        self._remember(key, result)
        return result

    def _remember(self, key: tuple[str, int], value: bytes | None) -> None:
        self._compressed[key] = value
        self._cached += len(value) if value else 0
        while self._cached > self._cache_bytes or len(self._compressed) > 100_000:
            _, old = self._compressed.popitem(last=False)
            self._cached -= len(old) if old else 0


def sample_spans(length: int) -> list[tuple[int, int]]:
    """``(start, size)`` of the samples of a piece: start, middle and end."""
    if length < 4 * SAMPLE:
        return [(0, length)]
    return [(0, SAMPLE), (length // 2, SAMPLE), (length - SAMPLE, SAMPLE)]


def worth_compressing(data: memoryview) -> bool:
    """Compress samples from the start, middle and end; True if they shrink enough."""
    return samples_shrink([data[start : start + size] for start, size in sample_spans(len(data))])


def samples_shrink(samples: list[memoryview] | list[bytes]) -> bool:
    """Whether the samples shrink by ``MIN_SAVING`` at a fast level."""
    compressor = zstandard.ZstdCompressor(level=1)
    raw = sum(len(s) for s in samples)
    packed = sum(len(compressor.compress(s)) for s in samples)
    return packed <= raw * (1 - MIN_SAVING)


def _compress_region(fd: int, offset: int, length: int) -> bytes | None:
    samples = [os.pread(fd, size, offset + start) for start, size in sample_spans(length)]
    if not samples_shrink(samples):
        return None
    data = os.pread(fd, length, offset)
    if len(data) != length:
        return None
    result = _compress(memoryview(data))
    return result if len(result) <= length * (1 - MIN_SAVING) else None


def _compress(data: memoryview) -> bytes:
    return zstandard.ZstdCompressor(level=LEVEL, write_content_size=True).compress(data)


def decompress_piece(body: bytes, length: int) -> bytes:
    """Decode a compressed piece that must be exactly ``length`` bytes."""
    try:
        declared = zstandard.frame_content_size(body)
    except zstandard.ZstdError as exc:
        raise CompressionError(f"not a zstd frame: {exc}") from None
    if declared != length:
        raise CompressionError(f"zstd frame declares {declared} bytes, the piece has {length}")
    try:
        data = zstandard.ZstdDecompressor().decompress(body, max_output_size=length)
    except zstandard.ZstdError as exc:
        raise CompressionError(f"zstd frame does not decode: {exc}") from None
    if len(data) != length:
        raise CompressionError(f"zstd frame decoded to {len(data)} bytes, expected {length}")
    return data
