"""A stored blob (``StoredBlob``) and the writer of one of its pieces (``PieceWriter``)."""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from swarmpull.core.bitfield import bits as bit_list
from swarmpull.core.geometry import PieceGeometry
from swarmpull.core.signing import PieceStatement
from swarmpull.edges.store.disk import BlobMapping, hash_region, pwrite_all, write_all
from swarmpull.edges.store.errors import PieceCorrupt, StoreError, StoreWriteError, WriteCancelled

FORMAT = 2  # piece records are piece statements
UNSIGNED = bytes(8 + 64)


class BlobOwner(Protocol):
    """What a blob needs from the store that owns it."""

    def next_tick(self) -> int: ...

    def piece_added(self, blob: StoredBlob) -> None: ...

    def corrupted(self, blob: StoredBlob, piece: int) -> None: ...

    def write_meta(self, meta: BlobMeta) -> None: ...

    def data_path(self, task_id: str) -> Path: ...


@dataclass(frozen=True, slots=True)
class BlobMeta:
    """What a stored blob is. ``digest`` is the expected whole-blob digest when known."""

    task_id: str
    size: int
    piece_size: int
    digest: str | None = None
    url: str = ""
    complete: bool = False
    format: int = FORMAT

    @property
    def geometry(self) -> PieceGeometry:
        return PieceGeometry(self.size, self.piece_size)


class StoredBlob:
    """One blob in the store. Its owner is the store; writers and readers borrow it."""

    def __init__(
        self, store: BlobOwner, meta: BlobMeta, fd: int, log_fd: int, mapping: BlobMapping | None = None
    ) -> None:
        self._store = store
        self.mapping = mapping  # None: the file's blocks are not reserved; pieces are pwritten
        self.meta = meta
        self.geometry = meta.geometry
        self.fd = fd
        self._log_fd = log_fd
        self.have = 0  # bitset of verified pieces
        self.verified_count = 0
        self.unchecked = 0  # verified before a restart, not re-hashed since
        self.statements: dict[int, PieceStatement] = {}
        self.pins = 0
        self.last_used = 0
        self.removed = False
        self._file_writers: dict[int, PieceWriter] = {}

    def __repr__(self) -> str:
        state = "complete" if self.meta.complete else f"{self.verified_count}/{self.geometry.count}"
        return f"<StoredBlob {self.meta.task_id[:20]} {state} pins={self.pins}>"

    @property
    def task_id(self) -> str:
        return self.meta.task_id

    @property
    def complete(self) -> bool:
        return self.meta.complete

    @property
    def path(self) -> Path:
        """The data file (where libtorrent seeds the blob from)."""
        return self._store.data_path(self.task_id)

    @property
    def all_verified(self) -> bool:
        return self.verified_count == self.geometry.count

    def is_verified(self, piece: int) -> bool:
        return bool(self.have >> piece & 1)

    def verified_pieces(self) -> list[int]:
        return bit_list(self.have)

    def sha(self, piece: int) -> str:
        return self.statements[piece].sha_hex

    def signed(self, piece: int) -> PieceStatement | None:
        """The piece's statement if a supernode signed it (direct reads are unsigned)."""
        statement = self.statements.get(piece)
        return statement if statement is not None and statement.key != UNSIGNED[:8] else None

    def writer(self, piece: int) -> PieceWriter:
        """A writer for ``piece``. A second concurrent writer of the same piece buffers in
        memory, so two copies never interleave in the file: whoever is in
        ``_file_writers[piece]`` owns the piece's region of the file, and only it writes
        there (a buffered copy takes the region over in ``seal``)."""
        if self.is_verified(piece):
            raise WriteCancelled(f"piece {piece} is already verified")
        in_memory = piece in self._file_writers
        writer = PieceWriter(self, piece, in_memory)
        if not in_memory:
            self._file_writers[piece] = writer
        return writer

    def piece_region(self, piece: int) -> tuple[int, int]:
        """``(offset, length)`` of a verified, checked piece in the data file (for
        ``sendfile``); PieceCorrupt if it is unchecked and no longer hashes right."""
        if not self.is_verified(piece):
            raise StoreError(f"piece {piece} of {self.task_id} is not verified")
        if self.unchecked >> piece & 1:
            self.check(piece)
        self.touch()
        return self.geometry.offset(piece), self.geometry.length(piece)

    def read_piece(self, piece: int) -> bytes:
        offset, length = self.piece_region(piece)
        return self.read(offset, length)

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def check(self, piece: int) -> None:
        """Re-hash an unchecked piece against its record; PieceCorrupt if it no longer
        matches (the blob is then no longer complete nor the piece verified)."""
        actual = self.hash_piece(piece)
        self.unchecked &= ~(1 << piece)
        if actual != self.sha(piece):
            self._store.corrupted(self, piece)
            raise PieceCorrupt(f"piece {piece} of {self.task_id} no longer hashes to its record")

    def check_all(self) -> None:
        """``check`` every unchecked piece (a blob kept from before a restart, handed out
        whole); PieceCorrupt at the first that no longer hashes right."""
        for piece in bit_list(self.unchecked):
            self.check(piece)

    def hash_piece(self, piece: int, also: hashlib._Hash | None = None) -> str:
        """The sha256 of the piece's bytes in the file (from the mapping when there is one:
        the same pages, without a copy); ``also`` is fed the same bytes. Thread-safe."""
        offset, length = self.geometry.offset(piece), self.geometry.length(piece)
        if self.mapping is not None:
            return self.mapping.sha256(offset, length, also)
        return hash_region(self.fd, offset, length, also)

    def feed_piece(self, piece: int, sha: hashlib._Hash) -> None:
        """Feed the piece's bytes in the file to ``sha`` only (a whole-blob digest)."""
        offset, length = self.geometry.offset(piece), self.geometry.length(piece)
        if self.mapping is not None:
            sha.update(self.mapping.view[offset : offset + length])
            return
        end = offset + length
        while offset < end:
            chunk = os.pread(self.fd, min(1 << 20, end - offset), offset)
            if not chunk:
                raise StoreError(f"{self.task_id}: the data file is shorter than the blob")
            sha.update(chunk)
            offset += len(chunk)

    def sha256_of_data(self) -> str:
        """The sha256 of the whole file as it is on disk."""
        return hash_region(self.fd, 0, self.meta.size)

    def mark_complete(self, digest: str | None, *, flush: bool = True) -> None:
        """Record that the whole blob is verified: flush the data first (unless ``flush``
        is False), then say so. Without the flush a crash can leave a blob recorded
        complete over bytes that never reached the disk; that is caught all the same,
        since every piece of a complete blob is re-hashed after a restart before it is
        read or served, but the blob is then fetched again."""
        if not self.all_verified:
            raise StoreError(f"{self.task_id} has unverified pieces")
        if flush:
            try:
                os.fdatasync(self.fd)
            except OSError as exc:
                raise StoreWriteError(f"flushing {self.task_id}: {exc.strerror or exc}") from exc
        self.meta = BlobMeta(**{**asdict(self.meta), "digest": digest, "complete": True})
        self._store.write_meta(self.meta)

    def touch(self) -> None:
        self.last_used = self._store.next_tick()

    def record(self, piece: int, sha: str, statement: PieceStatement | None = None) -> None:
        """Make a written piece readable: append its statement to the log."""
        if self.is_verified(piece):
            return
        if statement is None or statement.sha_hex != sha or statement.piece != piece:
            statement = PieceStatement(piece, bytes.fromhex(sha), UNSIGNED[:8], UNSIGNED[8:])
        write_all(self._log_fd, statement.encode())
        self.have |= 1 << piece
        self.verified_count += 1
        self.statements[piece] = statement
        self.touch()
        self._store.piece_added(self)

    def _close(self) -> None:
        if self.mapping is not None:
            self.mapping.close()
        for fd in (self.fd, self._log_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


class PieceWriter:
    """Receives one piece's bytes into the file, then hashes what was written: the piece is
    recorded only if that matches. Nothing it writes is readable until ``commit``.

    Bytes come in by ``write`` (a pwrite), or by ``landing``/``landed``: a socket receives
    straight into the piece's pages through the blob's mapping. Either way the hash is
    taken from the file afterwards, so bytes that changed on the way are caught. A second
    copy of a piece (the endgame) lands in its own buffer, and is written to the file
    only after ``seal`` took the region from the first copy."""

    def __init__(self, blob: StoredBlob, piece: int, in_memory: bool) -> None:
        self.blob = blob
        self.piece = piece
        self.offset = blob.geometry.offset(piece)
        self.length = blob.geometry.length(piece)
        self.received = 0
        self.cancelled = False
        self._buffer = bytearray(self.length) if in_memory else None
        self._region: memoryview | None = None

    def __repr__(self) -> str:
        kind = "buffer" if self._buffer is not None else "file"
        return (
            f"<PieceWriter {self.piece} {self.received}/{self.length} {kind}{' cancelled' * self.cancelled}>"
        )

    @property
    def buffered(self) -> bool:
        """Whether this copy lands in memory (a second copy of the piece)."""
        return self._buffer is not None

    def landing(self) -> memoryview | None:
        """Where the next bytes go, up to the piece's end: the piece's pages in the file,
        or this copy's buffer. None when the file cannot be written through a mapping
        (then use ``write``). Call it again for every receive: after a cancel it raises."""
        self._check_open()
        if self._buffer is not None:
            return memoryview(self._buffer)[self.received :]
        self.prefault()  # at once, unless done ahead
        return self._region[self.received :] if self._region is not None else None

    def prefault(self) -> None:
        """Make the piece's pages in the mapping present (thread-safe: ``PieceClient`` calls
        it off the event loop ahead of the first receive, so the page cache and the disk
        blocks are allocated there rather than on the loop, inside ``landing``)."""
        mapping = self.blob.mapping
        if self._buffer is None and self._region is None and mapping is not None:
            self._region = mapping.region(self.offset, self.length)

    def landed(self, count: int) -> None:
        """``count`` more bytes were received into ``landing()``."""
        if self.received + count > self.length:
            raise PieceCorrupt(f"piece {self.piece}: more than {self.length} bytes")
        self.received += count

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        self._check_open()
        if self.received + len(chunk) > self.length:
            raise PieceCorrupt(f"piece {self.piece}: more than {self.length} bytes")
        if self._buffer is not None:
            self._buffer[self.received : self.received + len(chunk)] = chunk
        else:
            pwrite_all(self.blob.fd, chunk, self.offset + self.received)
        self.received += len(chunk)

    def seal(self) -> None:
        """Every byte is in: make this copy the owner of the piece's region of the file
        (on the event loop, before ``digest`` runs in a thread). A buffered copy cancels
        the copy writing there, so nothing lands in the region while it is hashed."""
        self._check_open()
        if self.received != self.length:
            raise PieceCorrupt(f"piece {self.piece}: {self.received} of {self.length} bytes")
        owners = self.blob._file_writers
        current = owners.get(self.piece)
        if current is not self:
            if current is not None:
                current.cancelled = True
            owners[self.piece] = self

    def digest(self, also: hashlib._Hash | None = None) -> str:
        """The sha256 of the piece as it is in the file (thread-safe: call it off the event
        loop, after ``seal``); ``also`` is fed the same bytes. A buffered copy is written to
        the file first, then hashed from there too."""
        if self.received != self.length:
            raise PieceCorrupt(f"piece {self.piece}: {self.received} of {self.length} bytes")
        if self.blob._file_writers.get(self.piece) is not self:
            raise WriteCancelled(f"piece {self.piece}: another copy owns its region")
        buffer = self._buffer
        if buffer is not None:
            pwrite_all(self.blob.fd, buffer, self.offset)
        return self.blob.hash_piece(self.piece, also)

    def commit(
        self,
        expected_sha: str | None = None,
        *,
        record: bool = True,
        statement: PieceStatement | None = None,
        digest: str | None = None,
    ) -> str:
        """Verify and record the piece; returns its sha256. ``expected_sha`` None means the
        bytes are trusted (the seed reading its upstream) and their hash becomes the record.
        With ``record=False`` the piece stays unreadable until ``StoredBlob.record`` (a
        direct download records its pieces only once the whole blob's digest matched).
        ``digest``: what ``digest()`` returned, when it ran in a thread after ``seal``."""
        try:
            if digest is None:
                self.seal()
                digest = self.digest()
            self._check_open()
            if self.blob._file_writers.get(self.piece) is not self:
                raise WriteCancelled(f"piece {self.piece}: another copy owns its region")
            if expected_sha is not None and digest != expected_sha:
                raise PieceCorrupt(f"piece {self.piece}: sha256 {digest[:12]}… expected {expected_sha[:12]}…")
            if record:
                self.blob.record(self.piece, digest, statement)
            return digest
        finally:
            self._release()

    def abort(self) -> None:
        self.cancelled = True
        self._release()

    def _check_open(self) -> None:
        if self.cancelled or self.blob.removed or self.blob.is_verified(self.piece):
            raise WriteCancelled(f"piece {self.piece} no longer needed")

    def _release(self) -> None:
        if self.blob._file_writers.get(self.piece) is self:
            del self.blob._file_writers[self.piece]
        self._buffer = None
        self._region = None
