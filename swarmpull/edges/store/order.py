"""The whole blob's sha256, computed once, in piece order, while the pieces land."""

from __future__ import annotations

import hashlib

from swarmpull.edges.store.blob import StoredBlob
from swarmpull.edges.store.errors import StoreError


class InOrderDigest:
    """Feeds verified pieces, in order, from the blob's file to one sha256: every byte is
    hashed once for the whole digest, during the download rather than after it. Pieces
    are taken only once verified (their bytes no longer change) and only from the file,
    so the digest covers exactly what readers will get. One owner calls ``advance``,
    from one thread at a time (the download's hashing task)."""

    def __init__(self, blob: StoredBlob) -> None:
        self.blob = blob
        self.next = 0  # the first piece not fed yet
        self._sha = hashlib.sha256()

    def __repr__(self) -> str:
        return f"<InOrderDigest {self.blob.task_id[:20]} {self.next}/{self.blob.geometry.count}>"

    @property
    def done(self) -> bool:
        return self.next == self.blob.geometry.count

    @property
    def ready(self) -> bool:
        """Whether ``advance`` has a piece to feed now."""
        return not self.done and self.blob.is_verified(self.next)

    def advance(self) -> int:
        """Feed every verified piece from ``next`` on, stopping at the first gap; returns
        how many were fed. Thread-safe against the event loop (it only reads verified
        pieces); call it from one thread at a time."""
        fed = 0
        blob = self.blob
        while not self.done and blob.is_verified(self.next):
            if blob.removed:
                raise StoreError(f"{blob.task_id} was removed while it was hashed")
            blob.feed_piece(self.next, self._sha)
            self.next += 1
            fed += 1
        return fed

    def hexdigest(self) -> str:
        """The sha256 of the whole blob, once every piece was fed."""
        if not self.done:
            raise StoreError(f"{self.blob.task_id}: whole digest asked at piece {self.next}")
        return self._sha.hexdigest()
