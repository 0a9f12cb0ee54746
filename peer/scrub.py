"""Re-verifying what the disk kept: complete blobs are trusted across a restart only after
their pieces hash to their records again. Bit rot and a file truncated behind our back
are found here (or by the first read of a piece, which checks it too) and the blob is
dropped, never served."""

from __future__ import annotations

import asyncio
import logging

from peer.metrics import PeerMetrics
from swarmpull.edges.store import PieceCorrupt, PieceStore

log = logging.getLogger(__name__)


async def scrub(store: PieceStore, rate: int, metrics: PeerMetrics) -> None:
    """Check every unchecked piece, at most ``rate`` bytes per second, in a worker thread."""
    for blob in store.blobs():
        piece = 0
        while blob.unchecked and not blob.removed:
            if blob.unchecked >> piece & 1:
                length = blob.geometry.length(piece)
                try:
                    with store.pinned(blob):
                        await asyncio.to_thread(blob.check, piece)
                except PieceCorrupt as exc:
                    log.warning("scrub: %s", exc)
                    break  # the store dropped the blob
                metrics.scrubbed.inc(length)
                await asyncio.sleep(length / rate)
            piece += 1
    log.info("scrub: every complete blob re-verified")
