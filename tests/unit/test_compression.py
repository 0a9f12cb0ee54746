"""zstd on the wire: decided by sampling, bounded when decoding."""

from __future__ import annotations

import os

import pytest
import zstandard

from swarmpull.edges.transport.compression import (
    CompressionError,
    PieceCompressor,
    decompress_piece,
    worth_compressing,
)


def test_only_data_that_shrinks_is_compressed():
    assert worth_compressing(memoryview(b"abc" * 100_000))
    assert not worth_compressing(memoryview(os.urandom(300_000)))


async def test_compressor_caches_its_decision_and_result():
    compressor = PieceCompressor(cache_bytes=1 << 20)
    text = memoryview(b"hello swarm " * 50_000)
    first = await compressor.compressed("t", 0, text)
    assert first is not None and len(first) < len(text) // 10
    assert await compressor.compressed("t", 0, memoryview(b"ignored")) is first
    assert await compressor.compressed("t", 1, memoryview(os.urandom(200_000))) is None
    assert decompress_piece(first, len(text)) == bytes(text)


def test_a_frame_must_declare_exactly_the_piece_length():
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (64 << 20))  # tiny on the wire
    with pytest.raises(CompressionError, match="declares"):
        decompress_piece(bomb, 1 << 20)
    with pytest.raises(CompressionError, match="not a zstd frame"):
        decompress_piece(b"plainly not zstd", 16)
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(b"x" * 1000)
    with pytest.raises(CompressionError):
        decompress_piece(unsized, 1000)
