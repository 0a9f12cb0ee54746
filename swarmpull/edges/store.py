"""The piece store: blobs on disk, one file per task, and a record of verified pieces.

Layout under the store's root, per task ``T``:

- ``T.data``: the blob, a sparse file of its full size; pieces land at their offsets.
- ``T.pieces``: an append-only log of verified pieces, 36 bytes each (big-endian index,
  raw sha256). A torn last record (crash mid-write) is ignored.
- ``T.json``: what the task is (size, piece size, digest, upstream URL without its query
  string) and whether the whole blob has been verified. Written atomically.

Only verified pieces are ever read back. A restarted store re-hashes the pieces of every
incomplete blob against its log (a power cut may have lost written data), and trusts a
complete blob, whose data was flushed before ``complete`` was recorded.

The size quota counts blob sizes; making room evicts least-recently-used blobs that are
not pinned. A blob is pinned while it is being downloaded or read, so it is never evicted
under a reader.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import mmap
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from swarmpull.core.geometry import PieceGeometry
from swarmpull.core.tasks import validate_task_id

log = logging.getLogger(__name__)

_RECORD = struct.Struct(">I32s")


class StoreError(Exception):
    """Base of the store's errors."""


class StoreFull(StoreError):
    """No room for a blob within the cache size, even after evicting."""


class PieceCorrupt(StoreError):
    """A piece's bytes do not match the expected sha256 (or have the wrong length)."""


class StoreWriteError(StoreError):
    """The disk refused bytes (ENOSPC, EIO...): the piece or blob is not stored."""


class WriteCancelled(StoreError):
    """Another copy of the piece was verified first; this writer's bytes are not needed."""


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """Write every byte of ``data`` at ``offset``. ``os.pwrite`` may write fewer bytes
    than asked (a nearly full disk); the rest is retried, and a write that makes no
    progress is the disk saying no: StoreWriteError, never a silently short piece."""
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        try:
            written = os.pwrite(fd, view[done:], offset + done)
        except OSError as exc:
            raise StoreWriteError(f"writing {len(view)} bytes at {offset}: {exc.strerror or exc}") from exc
        if written <= 0:
            raise StoreWriteError(f"writing {len(view)} bytes at {offset}: the disk accepted none")
        done += written


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is out (an append to a log)."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except OSError as exc:
            raise StoreWriteError(f"appending {len(view)} bytes: {exc.strerror or exc}") from exc
        if written <= 0:
            raise StoreWriteError("appending to a log: the disk accepted none")
        view = view[written:]


@dataclass(frozen=True, slots=True)
class BlobMeta:
    """What a stored blob is. ``digest`` is the expected whole-blob digest when known."""

    task_id: str
    size: int
    piece_size: int
    digest: str | None = None
    url: str = ""
    complete: bool = False

    @property
    def geometry(self) -> PieceGeometry:
        return PieceGeometry(self.size, self.piece_size)


class StoredBlob:
    """One blob in the store. Its owner is the store; writers and readers borrow it."""

    def __init__(self, store: PieceStore, meta: BlobMeta, fd: int, log_fd: int) -> None:
        self._store = store
        self.meta = meta
        self.geometry = meta.geometry
        self._fd = fd
        self._log_fd = log_fd
        self.verified = bytearray(self.geometry.count)
        self.verified_count = 0
        self.piece_sha: dict[int, str] = {}
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
    def all_verified(self) -> bool:
        return self.verified_count == self.geometry.count

    def is_verified(self, piece: int) -> bool:
        return bool(self.verified[piece])

    def verified_pieces(self) -> list[int]:
        return [i for i, ok in enumerate(self.verified) if ok]

    def writer(self, piece: int) -> PieceWriter:
        """A writer for ``piece``. A second concurrent writer of the same piece buffers in
        memory, so two copies never interleave in the file."""
        if self.verified[piece]:
            raise WriteCancelled(f"piece {piece} is already verified")
        in_memory = piece in self._file_writers
        writer = PieceWriter(self, piece, in_memory)
        if not in_memory:
            self._file_writers[piece] = writer
        return writer

    def map_piece(self, piece: int) -> memoryview:
        """A read-only view of a verified piece, backed by an mmap of the data file, so
        bytes go from the page cache to a socket without a copy in Python. The mapping
        lives as long as the view (or a slice of it) is referenced."""
        if not self.verified[piece]:
            raise StoreError(f"piece {piece} of {self.task_id} is not verified")
        offset, length = self.geometry.offset(piece), self.geometry.length(piece)
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        mapping = mmap.mmap(self._fd, length + offset - start, access=mmap.ACCESS_READ, offset=start)
        self.touch()
        return memoryview(mapping)[offset - start :]

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self._fd, length, offset)

    def sha256_of_data(self) -> str:
        """The sha256 of the whole file as it is on disk."""
        digest = hashlib.sha256()
        for offset in range(0, self.meta.size, 1 << 20):
            digest.update(os.pread(self._fd, min(1 << 20, self.meta.size - offset), offset))
        return digest.hexdigest()

    def mark_complete(self, digest: str | None) -> None:
        """Record that the whole blob is verified: flush the data first, then say so."""
        if not self.all_verified:
            raise StoreError(f"{self.task_id} has unverified pieces")
        os.fdatasync(self._fd)
        self.meta = BlobMeta(**{**asdict(self.meta), "digest": digest, "complete": True})
        self._store._write_meta(self.meta)

    def touch(self) -> None:
        self.last_used = self._store._next_tick()

    def record(self, piece: int, sha: str) -> None:
        """Make a written piece readable: append it to the log of verified pieces."""
        if self.verified[piece]:
            return
        write_all(self._log_fd, _RECORD.pack(piece, bytes.fromhex(sha)))
        self.verified[piece] = 1
        self.verified_count += 1
        self.piece_sha[piece] = sha
        self.touch()

    def _close(self) -> None:
        for fd in (self._fd, self._log_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


class PieceWriter:
    """Receives one piece's bytes, hashes them as they come, and records the piece only if
    the hash matches. Nothing it writes is readable until ``commit`` succeeds."""

    def __init__(self, blob: StoredBlob, piece: int, in_memory: bool) -> None:
        self.blob = blob
        self.piece = piece
        self.offset = blob.geometry.offset(piece)
        self.length = blob.geometry.length(piece)
        self.received = 0
        self.cancelled = False
        self._hash = hashlib.sha256()
        self._buffer = bytearray() if in_memory else None

    def write(self, chunk: bytes | memoryview) -> None:
        if self.cancelled or self.blob.removed:
            raise WriteCancelled(f"piece {self.piece} no longer needed")
        if self.received + len(chunk) > self.length:
            raise PieceCorrupt(f"piece {self.piece}: more than {self.length} bytes")
        self._hash.update(chunk)
        if self._buffer is not None:
            self._buffer += chunk
        else:
            pwrite_all(self.blob._fd, chunk, self.offset + self.received)
        self.received += len(chunk)

    def commit(self, expected_sha: str | None = None, *, record: bool = True) -> str:
        """Verify and record the piece; returns its sha256. ``expected_sha`` None means the
        bytes are trusted (the seed reading its upstream) and their hash becomes the record.
        With ``record=False`` the piece stays unreadable until ``StoredBlob.record`` (a
        direct download records its pieces only once the whole blob's digest matched)."""
        blob = self.blob
        try:
            if self.cancelled or blob.removed or blob.verified[self.piece]:
                raise WriteCancelled(f"piece {self.piece} no longer needed")
            if self.received != self.length:
                raise PieceCorrupt(f"piece {self.piece}: {self.received} of {self.length} bytes")
            sha = self._hash.hexdigest()
            if expected_sha is not None and sha != expected_sha:
                raise PieceCorrupt(f"piece {self.piece}: sha256 {sha[:12]}… expected {expected_sha[:12]}…")
            if self._buffer is not None:
                other = blob._file_writers.pop(self.piece, None)
                if other is not None:
                    other.cancelled = True
                pwrite_all(blob._fd, self._buffer, self.offset)
            if record:
                blob.record(self.piece, sha)
            return sha
        finally:
            self._release()

    def abort(self) -> None:
        self.cancelled = True
        self._release()

    def _release(self) -> None:
        if self.blob._file_writers.get(self.piece) is self:
            del self.blob._file_writers[self.piece]
        self._buffer = None


class PieceStore:
    """Blobs on disk under ``root``, within ``quota`` bytes (None: no limit)."""

    def __init__(
        self,
        root: Path,
        quota: int | None = None,
        on_evict: Callable[[str], None] | None = None,
    ) -> None:
        self.root = Path(root)
        self.quota = quota
        self.on_evict = on_evict
        self._blobs: dict[str, StoredBlob] = {}
        self._tick = 0

    def __repr__(self) -> str:
        return f"<PieceStore {self.root} blobs={len(self._blobs)} used={self.used}>"

    @property
    def used(self) -> int:
        return sum(b.meta.size for b in self._blobs.values())

    def blobs(self) -> list[StoredBlob]:
        return list(self._blobs.values())

    def get(self, task_id: str) -> StoredBlob | None:
        return self._blobs.get(task_id)

    def load(self) -> None:
        """Open what a previous run left; re-verify incomplete blobs; delete debris."""
        self.root.mkdir(parents=True, exist_ok=True)
        found = []
        for meta_path in sorted(self.root.glob("*.json")):
            try:
                raw = json.loads(meta_path.read_text())
                meta = BlobMeta(**raw)
                validate_task_id(meta.task_id)
                if meta_path.stem != meta.task_id:
                    raise ValueError("file name does not match task id")
            except (ValueError, TypeError) as exc:
                log.warning("store: removing unreadable %s: %s", meta_path.name, exc)
                self._unlink(meta_path.stem)
                continue
            found.append(
                (
                    self._data(meta.task_id).stat().st_mtime if self._data(meta.task_id).exists() else 0,
                    meta,
                )
            )
        for _, meta in sorted(found, key=lambda item: item[0]):
            blob = self._open(meta, create=False)
            if blob is not None:
                self._blobs[meta.task_id] = blob
                blob.touch()
        known = set(self._blobs)
        for path in self.root.iterdir():
            if path.is_file() and path.name.split(".")[0] not in known:
                path.unlink(missing_ok=True)

    def create(self, meta: BlobMeta) -> StoredBlob:
        """A new, empty blob (or the existing one for that task)."""
        existing = self._blobs.get(meta.task_id)
        if existing is not None:
            return existing
        self._make_room(meta.size)
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_meta(meta)
        blob = self._open(meta, create=True)
        if blob is None:
            raise StoreError(f"could not create {meta.task_id}")
        self._blobs[meta.task_id] = blob
        blob.touch()
        return blob

    def remove(self, task_id: str) -> None:
        blob = self._blobs.pop(task_id, None)
        if blob is not None:
            blob.removed = True
            blob._close()
        self._unlink(task_id)

    @contextlib.contextmanager
    def pinned(self, blob: StoredBlob) -> Iterator[StoredBlob]:
        """Keep ``blob`` from eviction while the block runs."""
        blob.pins += 1
        blob.touch()
        try:
            yield blob
        finally:
            blob.pins -= 1

    def close(self) -> None:
        for blob in self._blobs.values():
            blob._close()
        self._blobs.clear()

    # ------------------------------------------------------------------ internals

    def _next_tick(self) -> int:
        self._tick += 1
        return self._tick

    def _make_room(self, size: int) -> None:
        if self.quota is None:
            return
        if size > self.quota:
            raise StoreFull(f"blob of {size} bytes is larger than the cache size {self.quota}")
        victims = sorted((b for b in self._blobs.values() if b.pins == 0), key=lambda b: b.last_used)
        used = self.used
        for victim in victims:
            if used + size <= self.quota:
                break
            log.info(
                "store: evicting %s (%d bytes, least recently used)",
                victim.task_id,
                victim.meta.size,
            )
            used -= victim.meta.size
            self.remove(victim.task_id)
            if self.on_evict is not None:
                self.on_evict(victim.task_id)
        if used + size > self.quota:
            raise StoreFull(
                f"cache full: {used} of {self.quota} bytes are held by blobs in use; cannot fit {size} more"
            )

    def _data(self, task_id: str) -> Path:
        return self.root / f"{task_id}.data"

    def _write_meta(self, meta: BlobMeta) -> None:
        path = self.root / f"{meta.task_id}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(meta)))
        os.replace(tmp, path)

    def _open(self, meta: BlobMeta, create: bool) -> StoredBlob | None:
        data, log_path = self._data(meta.task_id), self.root / f"{meta.task_id}.pieces"
        if not create and not data.exists():
            log.warning("store: %s has no data file; removing", meta.task_id)
            self._unlink(meta.task_id)
            return None
        fd = os.open(data, os.O_RDWR | os.O_CREAT, 0o644)
        if os.fstat(fd).st_size != meta.size:
            os.ftruncate(fd, meta.size)
        records = b"" if create or not log_path.exists() else log_path.read_bytes()
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        blob = StoredBlob(self, meta, fd, log_fd)
        good = self._replay(blob, records)
        if len(good) != len(records):
            os.ftruncate(log_fd, 0)  # rewrite the log with only the records that held
            write_all(log_fd, good)
        return blob

    def _replay(self, blob: StoredBlob, records: bytes) -> bytes:
        """Apply the log; for an incomplete blob keep only pieces whose data still hashes
        to their record. Returns the records kept."""
        kept = bytearray()
        count = blob.geometry.count
        usable = len(records) - len(records) % _RECORD.size
        for start in range(0, usable, _RECORD.size):
            piece, raw = _RECORD.unpack_from(records, start)
            if piece >= count or blob.verified[piece]:
                continue
            sha = raw.hex()
            if not blob.meta.complete:
                data = blob.read(blob.geometry.offset(piece), blob.geometry.length(piece))
                if hashlib.sha256(data).hexdigest() != sha:
                    log.warning("store: %s piece %d failed re-verification", blob.task_id, piece)
                    continue
            blob.verified[piece] = 1
            blob.verified_count += 1
            blob.piece_sha[piece] = sha
            kept += records[start : start + _RECORD.size]
        if blob.meta.complete and not blob.all_verified:
            log.warning("store: %s marked complete but its log is short; re-verifying", blob.task_id)
            blob.meta = BlobMeta(**{**asdict(blob.meta), "complete": False})
            self._write_meta(blob.meta)
        return bytes(kept)

    def _unlink(self, task_id: str) -> None:
        for suffix in (".data", ".pieces", ".json", ".json.tmp"):
            (self.root / f"{task_id}{suffix}").unlink(missing_ok=True)
