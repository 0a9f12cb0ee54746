"""Checking a whole blob that libtorrent wrote, before the store takes it in.

libtorrent checked every 16 KiB block against the torrent's merkle tree; the torrent
came from the supernode. The store trusts nothing it did not check itself, against
what the supernode signed: the whole file's sha256 must be the blob's digest, and each
piece (in the swarm's geometry, not the torrent's) must hash to the sha256 of its
signed statement, so that the node can serve the blob to HTTP peers with those
statements. One pass over the file does both.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from swarmpull.core.digest import Digest
from swarmpull.core.geometry import PieceGeometry
from swarmpull.core.signing import PieceStatement
from swarmpull.edges.store import PieceCorrupt

_CHUNK = 1 << 20


def verify_file(
    path: Path, geometry: PieceGeometry, digest: Digest, statements: list[PieceStatement]
) -> None:
    """Returns if the file at ``path`` is the blob: ``geometry.size`` bytes hashing to
    ``digest``, piece by piece to ``statements`` (one per piece). PieceCorrupt otherwise.
    Blocking (it reads the whole file): call it in a thread."""
    expected = {s.piece: s.sha for s in statements}
    if sorted(expected) != list(range(geometry.count)):
        raise PieceCorrupt("the piece statements do not cover the blob")
    whole = hashlib.sha256()
    with open(path, "rb", buffering=0) as file:
        if os.fstat(file.fileno()).st_size != geometry.size:
            raise PieceCorrupt(f"{path.name} is not {geometry.size} bytes long")
        for piece in range(geometry.count):
            sha = hashlib.sha256()
            left = geometry.length(piece)
            while left:
                chunk = file.read(min(_CHUNK, left))
                if not chunk:
                    raise PieceCorrupt(f"{path.name} ended early")
                sha.update(chunk)
                whole.update(chunk)
                left -= len(chunk)
            if sha.digest() != expected[piece]:
                raise PieceCorrupt(f"piece {piece} does not hash to its signed sha256")
    if whole.hexdigest() != digest.hex:
        raise PieceCorrupt(f"the blob hashes to sha256:{whole.hexdigest()}, not {digest}")
