"""The piece store: blobs on disk, one file per task, and a record of verified pieces.

Layout under the store's root, per task ``T``:

- ``T.data``: the blob at its full size (space reserved with ``posix_fallocate`` when the
  file system can, so a full disk fails the blob when it is created, not half way);
  pieces land at their offsets.
- ``T.pieces``: an append-only log of verified pieces, one piece statement each (108
  bytes: index, sha256, and the supernode's key id and signature, zeros when unsigned;
  see ``swarmpull.core.signing``). A torn last record (crash mid-write) is ignored.
- ``T.json``: what the task is (size, piece size, digest, upstream URL without its query
  string) and whether the whole blob has been verified. Written atomically.
- ``.lock``: held (``flock``) by the one daemon that uses the directory.

Only verified pieces are read back, and only bytes that hash right: a piece is written
to the file first and hashed from what was written, so the bytes on disk are the bytes
verified, whatever happened to a buffer on the way. Where the file's blocks are reserved
the file is also mapped, and a socket receives a piece straight into its pages (no copy);
the hash is still taken from the file's pages. ``InOrderDigest`` hashes the whole blob
once, in piece order, as pieces are verified. After a restart, the pieces of an
incomplete blob are re-hashed as the store loads; those of a complete blob are
"unchecked" until ``check`` re-hashes them (the daemon's scrubber, rate-limited, or the
first reader): every read of an unchecked piece checks it first, so bit rot is never
served. Disks are hostile too: every write loops until all its bytes are down, and a
write the disk refuses (ENOSPC, EIO) is a ``StoreWriteError``, never a verified record.

The size quota counts blob sizes; making room evicts least-recently-used blobs that are
not pinned, also while the file system has less than ``min_free`` bytes free. A blob is
pinned while it is being downloaded or read, so it is never evicted under a reader.
"""

import os  # noqa: F401  (tests reach the os module through here to fake a failing disk)

from swarmpull.edges.store.blob import FORMAT, BlobMeta, PieceWriter, StoredBlob
from swarmpull.edges.store.disk import hash_region, pwrite_all, write_all
from swarmpull.edges.store.errors import (
    PieceCorrupt,
    StoreError,
    StoreFull,
    StoreLocked,
    StoreWriteError,
    WriteCancelled,
)
from swarmpull.edges.store.order import InOrderDigest
from swarmpull.edges.store.store import PieceStore

__all__ = [
    "FORMAT",
    "BlobMeta",
    "InOrderDigest",
    "PieceCorrupt",
    "PieceStore",
    "PieceWriter",
    "StoreError",
    "StoreFull",
    "StoreLocked",
    "StoreWriteError",
    "StoredBlob",
    "WriteCancelled",
    "hash_region",
    "pwrite_all",
    "write_all",
]
