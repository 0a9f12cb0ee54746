"""Reading a blob in order while it downloads: the peer's local API and the registry
proxy stream through this.

Bytes are handed out only from verified pieces, in order, as they land (a piece not
re-hashed since a restart is checked as it is read). The very last chunk of the blob is
held back until the whole blob's digest has been verified, so a reader that gets every
byte got a blob that matches its digest; if it does not match, the reader gets
``DownloadFailed`` instead of the last bytes.

A part of a blob (a ``Range`` request) is different: its reader never sees the last byte,
so holding that back protects nothing, and each piece's statement was signed before the
whole digest was checked (a lying upstream's pieces verify against them). A partial read
therefore waits until the whole blob is verified, and gets ``DownloadFailed`` otherwise
(the registry proxy then reads the range from upstream).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from peer.download import TaskDownload
from swarmpull.core.blobs import DownloadFailed, WrongSize
from swarmpull.edges.store import PieceCorrupt

CHUNK = 1024 * 1024


async def read_blob(
    download: TaskDownload, start: int = 0, end: int | None = None, told: int | None = None
) -> AsyncIterator[memoryview]:
    """Yield bytes ``[start, end)`` of the blob (to its end when ``end`` is None).
    ``told``: the blob's size as the reader was told it (a manifest's descriptor); WrongSize
    before any byte when the blob is another size."""
    blob = await download.wait_ready()
    store = download.store
    size = blob.meta.size
    if told is not None and told != size:
        raise WrongSize(f"{blob.task_id} is {size} bytes, not {told} as its reader was told")
    end = size if end is None else end
    if not 0 <= start <= end <= size:
        raise DownloadFailed(f"bytes [{start}, {end}) are not in {blob.task_id} of {size} bytes")
    geometry = blob.geometry
    if (start, end) != (0, size):
        await download.wait_complete()
    with store.pinned(blob):
        for piece in geometry.covering(start, end):
            await download.wait_piece(piece)
            try:
                data = memoryview(await asyncio.to_thread(blob.read_piece, piece))
            except PieceCorrupt as exc:
                raise DownloadFailed(str(exc)) from None
            offset = geometry.offset(piece)
            lo, hi = max(start, offset) - offset, min(end, offset + len(data)) - offset
            for pos in range(lo, hi, CHUNK):
                stop = min(pos + CHUNK, hi)
                if offset + stop == size:  # the last byte of the blob: only once verified
                    await download.wait_complete()
                yield data[pos:stop]
        if start == end == size:
            await download.wait_complete()
