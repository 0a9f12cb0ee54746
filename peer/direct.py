"""A peer's direct read of a blob from its upstream, when the swarm cannot serve it.

Pieces are written as the body streams in but become readable only once the whole
blob's digest matched (there are no signed per-piece hashes to check them against). A
node reads at most ``max_direct`` blobs this way at once, and every fallback is counted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import aiohttp

from peer.config import PeerConfig
from peer.metrics import PeerMetrics
from swarmpull.core.blobs import BlobRequest
from swarmpull.core.digest import Digest
from swarmpull.core.geometry import choose_piece_size
from swarmpull.edges.origin import UpstreamFetch
from swarmpull.edges.store import StoredBlob

log = logging.getLogger(__name__)


class _DirectEvents:
    """Collects the pieces of a direct read; they are recorded once the digest matched."""

    def __init__(self, create: Callable[[int, int], StoredBlob], expect: Callable[[Digest], None]) -> None:
        self._create = create
        self._expect = expect
        self.pieces: dict[int, str] = {}

    def geometry(self, size: int) -> StoredBlob:
        return self._create(size, choose_piece_size(size))

    def digest(self, digest: Digest) -> None:
        self._expect(digest)

    def piece(self, index: int, sha: str) -> None:
        self.pieces[index] = sha


async def read_direct(
    session: aiohttp.ClientSession,
    config: PeerConfig,
    metrics: PeerMetrics,
    request: BlobRequest,
    expected: Digest | None,
    blob: StoredBlob | None,
    create: Callable[[int, int], StoredBlob],
    expect: Callable[[Digest], None],
    read: list[int] | None = None,
) -> StoredBlob:
    """Read what ``blob`` lacks (all of it when None) from the request's URL; record the
    pieces once the whole digest matched. Raises UpstreamError. ``read[0]`` counts the
    bytes read from upstream (for the events log), whether or not the read succeeds."""
    events = _DirectEvents(create, expect)
    counter = metrics.download_bytes.labels("upstream")

    def on_bytes(size: int) -> None:
        counter.inc(size)
        if read is not None:
            read[0] += size

    fetch = UpstreamFetch(
        session,
        lambda _broken: (request.url, request.headers),  # one requester, one URL
        expected,
        events,
        config.upstream,
        on_bytes=on_bytes,
    )
    blob = await fetch.run(blob)
    for piece, sha in sorted(events.pieces.items()):
        blob.record(piece, sha)
    return blob
