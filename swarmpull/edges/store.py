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
verified, whatever happened to a buffer on the way. After a restart, the pieces of an
incomplete blob are re-hashed as the store loads; those of a complete blob are
"unchecked" until ``check`` re-hashes them (the daemon's scrubber, rate-limited, or the
first reader): every read of an unchecked piece checks it first, so bit rot is never
served. Disks are hostile too: every write loops until all its bytes are down, and a
write the disk refuses (ENOSPC, EIO) is a ``StoreWriteError``, never a verified record.

The size quota counts blob sizes; making room evicts least-recently-used blobs that are
not pinned, also while the file system has less than ``min_free`` bytes free. A blob is
pinned while it is being downloaded or read, so it is never evicted under a reader.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from swarmpull.core.bitfield import bits as bit_list
from swarmpull.core.bitfield import full
from swarmpull.core.geometry import PieceGeometry
from swarmpull.core.signing import STATEMENT_SIZE, PieceStatement
from swarmpull.core.tasks import validate_task_id

log = logging.getLogger(__name__)

FORMAT = 2  # piece records are piece statements
_UNSIGNED = bytes(8 + 64)
_HASH_CHUNK = 1 << 20


class StoreError(Exception):
    """Base of the store's errors."""


class StoreFull(StoreError):
    """No room for a blob within the cache size (or the free space), even after evicting."""


class StoreLocked(StoreError):
    """Another daemon uses this store's directory."""


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


def hash_region(fd: int, offset: int, length: int, also: hashlib._Hash | None = None) -> str:
    """The sha256 of ``length`` bytes of a file at ``offset``; ``also`` is fed the same
    bytes (a whole-blob digest). hashlib releases the GIL on large buffers: call it from
    a thread for big pieces."""
    digest = hashlib.sha256()
    end = offset + length
    while offset < end:
        chunk = os.pread(fd, min(_HASH_CHUNK, end - offset), offset)
        if not chunk:
            break  # shorter than it should be: the digest will not match
        digest.update(chunk)
        if also is not None:
            also.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


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

    def __init__(self, store: PieceStore, meta: BlobMeta, fd: int, log_fd: int) -> None:
        self._store = store
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
        return self._store._data(self.task_id)

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
        return statement if statement is not None and statement.key != _UNSIGNED[:8] else None

    def writer(self, piece: int) -> PieceWriter:
        """A writer for ``piece``. A second concurrent writer of the same piece buffers in
        memory, so two copies never interleave in the file."""
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
        offset, length = self.geometry.offset(piece), self.geometry.length(piece)
        actual = hash_region(self.fd, offset, length)
        self.unchecked &= ~(1 << piece)
        if actual != self.sha(piece):
            self._store.corrupted(self, piece)
            raise PieceCorrupt(f"piece {piece} of {self.task_id} no longer hashes to its record")

    def sha256_of_data(self) -> str:
        """The sha256 of the whole file as it is on disk."""
        return hash_region(self.fd, 0, self.meta.size)

    def mark_complete(self, digest: str | None) -> None:
        """Record that the whole blob is verified: flush the data first, then say so."""
        if not self.all_verified:
            raise StoreError(f"{self.task_id} has unverified pieces")
        try:
            os.fdatasync(self.fd)
        except OSError as exc:
            raise StoreWriteError(f"flushing {self.task_id}: {exc.strerror or exc}") from exc
        self.meta = BlobMeta(**{**asdict(self.meta), "digest": digest, "complete": True})
        self._store._write_meta(self.meta)

    def touch(self) -> None:
        self.last_used = self._store._next_tick()

    def record(self, piece: int, sha: str, statement: PieceStatement | None = None) -> None:
        """Make a written piece readable: append its statement to the log."""
        if self.is_verified(piece):
            return
        if statement is None or statement.sha_hex != sha or statement.piece != piece:
            statement = PieceStatement(piece, bytes.fromhex(sha), _UNSIGNED[:8], _UNSIGNED[8:])
        write_all(self._log_fd, statement.encode())
        self.have |= 1 << piece
        self.verified_count += 1
        self.statements[piece] = statement
        self.touch()
        self._store._piece_added(self)

    def _close(self) -> None:
        for fd in (self.fd, self._log_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


class PieceWriter:
    """Receives one piece's bytes into the file, then hashes what was written: the piece is
    recorded only if that matches. Nothing it writes is readable until ``commit``."""

    def __init__(self, blob: StoredBlob, piece: int, in_memory: bool) -> None:
        self.blob = blob
        self.piece = piece
        self.offset = blob.geometry.offset(piece)
        self.length = blob.geometry.length(piece)
        self.received = 0
        self.cancelled = False
        self._buffer = bytearray() if in_memory else None

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        if self.cancelled or self.blob.removed:
            raise WriteCancelled(f"piece {self.piece} no longer needed")
        if self.received + len(chunk) > self.length:
            raise PieceCorrupt(f"piece {self.piece}: more than {self.length} bytes")
        if self._buffer is not None:
            self._buffer += chunk
        else:
            pwrite_all(self.blob.fd, chunk, self.offset + self.received)
        self.received += len(chunk)

    def digest(self, also: hashlib._Hash | None = None) -> str:
        """The sha256 of what was written (thread-safe: call it off the event loop); ``also``
        is fed the same bytes. A buffered copy is written to the file first, then hashed
        from there too."""
        if self.received != self.length:
            raise PieceCorrupt(f"piece {self.piece}: {self.received} of {self.length} bytes")
        if self._buffer is not None:
            if self.blob.is_verified(self.piece):
                raise WriteCancelled(f"piece {self.piece} no longer needed")
            pwrite_all(self.blob.fd, self._buffer, self.offset)
        return hash_region(self.blob.fd, self.offset, self.length, also)

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
        ``digest``: what ``digest()`` returned, when it ran in a thread."""
        blob = self.blob
        try:
            if self.cancelled or blob.removed or blob.is_verified(self.piece):
                raise WriteCancelled(f"piece {self.piece} no longer needed")
            if self.received != self.length:
                raise PieceCorrupt(f"piece {self.piece}: {self.received} of {self.length} bytes")
            if self._buffer is not None:
                other = blob._file_writers.pop(self.piece, None)
                if other is not None:
                    other.cancelled = True
            sha = digest if digest is not None else self.digest()
            if expected_sha is not None and sha != expected_sha:
                raise PieceCorrupt(f"piece {self.piece}: sha256 {sha[:12]}… expected {expected_sha[:12]}…")
            if record:
                blob.record(self.piece, sha, statement)
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
    """Blobs on disk under ``root``, within ``quota`` bytes (None: no limit), keeping at
    least ``min_free`` bytes of the file system free."""

    def __init__(
        self,
        root: Path,
        quota: int | None = None,
        on_evict: Callable[[str], None] | None = None,
        *,
        min_free: int = 0,
        on_piece: Callable[[StoredBlob], None] | None = None,
        on_corrupt: Callable[[StoredBlob, int], None] | None = None,
    ) -> None:
        self.root = Path(root)
        self.quota = quota
        self.min_free = min_free
        self.on_evict = on_evict
        self.on_piece = on_piece
        self.on_corrupt = on_corrupt
        self._blobs: dict[str, StoredBlob] = {}
        self._tick = 0
        self._lock_fd: int | None = None

    def __repr__(self) -> str:
        return f"<PieceStore {self.root} blobs={len(self._blobs)} used={self.used}>"

    @property
    def used(self) -> int:
        return sum(b.meta.size for b in self._blobs.values())

    def blobs(self) -> list[StoredBlob]:
        return list(self._blobs.values())

    def get(self, task_id: str) -> StoredBlob | None:
        return self._blobs.get(task_id)

    def lock(self) -> None:
        """Take the directory for this daemon; StoreLocked if another one has it."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise StoreLocked(f"another swarmpull daemon is using {self.root}") from None
            raise
        self._lock_fd = fd

    def load(self) -> None:
        """Lock the directory, open what a previous run left, re-verify incomplete blobs,
        delete debris."""
        if self._lock_fd is None:
            self.lock()
        found = []
        for meta_path in sorted(self.root.glob("*.json")):
            try:
                raw = json.loads(meta_path.read_text())
                meta = BlobMeta(**raw)
                validate_task_id(meta.task_id)
                if meta_path.stem != meta.task_id:
                    raise ValueError("file name does not match task id")
                if meta.format != FORMAT:
                    raise ValueError(f"written in format {meta.format}, not {FORMAT}")
            except (ValueError, TypeError) as exc:
                log.warning("store: removing unreadable %s: %s", meta_path.name, exc)
                self._unlink(meta_path.stem)
                continue
            data = self._data(meta.task_id)
            found.append((data.stat().st_mtime if data.exists() else 0, meta))
        for _, meta in sorted(found, key=lambda item: item[0]):
            blob = self._open(meta, create=False)
            if blob is not None:
                self._blobs[meta.task_id] = blob
                blob.touch()
        known = set(self._blobs)
        for path in self.root.iterdir():
            if path.is_file() and path.name != ".lock" and path.name.split(".")[0] not in known:
                path.unlink(missing_ok=True)

    def create(self, meta: BlobMeta) -> StoredBlob:
        """A new, empty blob (or the existing one for that task)."""
        existing = self._blobs.get(meta.task_id)
        if existing is not None:
            return existing
        self._make_room(meta.size)
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_meta(meta)
        try:
            blob = self._open(meta, create=True)
        except (OSError, StoreError):
            self._unlink(meta.task_id)
            raise
        if blob is None:
            raise StoreError(f"could not create {meta.task_id}")
        self._blobs[meta.task_id] = blob
        blob.touch()
        return blob

    def adopt(self, meta: BlobMeta, path: Path, statements: list[PieceStatement]) -> StoredBlob:
        """Take in a whole blob that arrived another way (a file libtorrent wrote) and that
        the caller verified, whole digest and every piece against ``statements`` (see
        ``swarmpull.edges.torrent.adopt``): the file moves into the store, complete. A blob
        already complete here wins (the file is deleted); one being downloaded is kept,
        and StoreError says so."""
        existing = self._blobs.get(meta.task_id)
        if existing is not None:
            if existing.complete:
                path.unlink(missing_ok=True)
                return existing
            if existing.pins:
                raise StoreError(f"{meta.task_id} is being downloaded another way")
            self.remove(meta.task_id)
        self._make_room(meta.size)
        self.root.mkdir(parents=True, exist_ok=True)
        meta = BlobMeta(**{**asdict(meta), "complete": True})
        try:
            log_path = self.root / f"{meta.task_id}.pieces"
            log_path.write_bytes(b"".join(s.encode() for s in sorted(statements, key=lambda s: s.piece)))
            try:
                os.replace(path, self._data(meta.task_id))
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                shutil.copyfile(path, self._data(meta.task_id))  # another file system
                path.unlink()
            self._write_meta(meta)
            blob = self._open(meta, create=False)
        except OSError as exc:
            self._unlink(meta.task_id)
            raise StoreWriteError(f"adopting {meta.task_id}: {exc.strerror or exc}") from exc
        if blob is None or not blob.complete:
            self._unlink(meta.task_id)
            raise StoreError(f"could not adopt {meta.task_id}")
        blob.unchecked = 0  # the caller hashed every piece of this very file just now
        self._blobs[meta.task_id] = blob
        blob.touch()
        self._piece_added(blob)
        return blob

    def remove(self, task_id: str) -> None:
        blob = self._blobs.pop(task_id, None)
        if blob is not None:
            blob.removed = True
            blob._close()
        self._unlink(task_id)

    def corrupted(self, blob: StoredBlob, piece: int) -> None:
        """A piece of ``blob`` failed its check: the blob goes, and the owner hears of it."""
        log.warning("store: %s piece %d no longer hashes to its record; dropped", blob.task_id, piece)
        self.remove(blob.task_id)
        if self.on_corrupt is not None:
            self.on_corrupt(blob, piece)
        if self.on_evict is not None:
            self.on_evict(blob.task_id)

    @contextlib.contextmanager
    def pinned(self, blob: StoredBlob) -> Iterator[StoredBlob]:
        """Keep ``blob`` from eviction while the block runs."""
        blob.pins += 1
        blob.touch()
        try:
            yield blob
        finally:
            blob.pins -= 1

    def keep_free(self, share: float) -> None:
        """Keep ``share`` of the file system free (evicting as needed)."""
        self.root.mkdir(parents=True, exist_ok=True)
        stat = os.statvfs(self.root)
        self.min_free = int(share * stat.f_blocks * stat.f_frsize)

    def free_space(self) -> int:
        stat = os.statvfs(self.root)
        return stat.f_bavail * stat.f_frsize

    def close(self) -> None:
        for blob in self._blobs.values():
            blob._close()
        self._blobs.clear()
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

    # ------------------------------------------------------------------ internals

    def _next_tick(self) -> int:
        self._tick += 1
        return self._tick

    def _piece_added(self, blob: StoredBlob) -> None:
        if self.on_piece is not None:
            self.on_piece(blob)

    def _short(self, used: int, size: int) -> bool:
        """Whether ``size`` more bytes would break the quota or the free-space floor."""
        if self.quota is not None and used + size > self.quota:
            return True
        if self.min_free:
            self.root.mkdir(parents=True, exist_ok=True)
            return self.free_space() - size < self.min_free
        return False

    def _make_room(self, size: int) -> None:
        if self.quota is not None and size > self.quota:
            raise StoreFull(f"blob of {size} bytes is larger than the cache size {self.quota}")
        used = self.used
        if not self._short(used, size):
            return
        victims = sorted((b for b in self._blobs.values() if b.pins == 0), key=lambda b: b.last_used)
        for victim in victims:
            log.info("store: evicting %s (%d bytes, least recently used)", victim.task_id, victim.meta.size)
            used -= victim.meta.size
            self.remove(victim.task_id)
            if self.on_evict is not None:
                self.on_evict(victim.task_id)
            if not self._short(used, size):
                return
        if self.quota is not None and used + size > self.quota:
            raise StoreFull(
                f"cache full: {used} of {self.quota} bytes are held by blobs in use; cannot fit {size} more"
            )
        raise StoreFull(f"disk full: {size} bytes would leave less than {self.min_free} free in {self.root}")

    def _data(self, task_id: str) -> Path:
        return self.root / f"{task_id}.data"

    def _write_meta(self, meta: BlobMeta) -> None:
        path = self.root / f"{meta.task_id}.json"
        tmp = path.with_suffix(".json.tmp")
        try:
            tmp.write_text(json.dumps(asdict(meta)))
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreWriteError(f"writing {path.name}: {exc.strerror or exc}") from exc

    def _open(self, meta: BlobMeta, create: bool) -> StoredBlob | None:
        data, log_path = self._data(meta.task_id), self.root / f"{meta.task_id}.pieces"
        if not create and not data.exists():
            log.warning("store: %s has no data file; removing", meta.task_id)
            self._unlink(meta.task_id)
            return None
        fd = os.open(data, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size != meta.size:
                _reserve(fd, meta.size)
            records = b"" if create or not log_path.exists() else log_path.read_bytes()
            log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except BaseException:
            os.close(fd)
            raise
        blob = StoredBlob(self, meta, fd, log_fd)
        good = self._replay(blob, records)
        if len(good) != len(records):
            os.ftruncate(log_fd, 0)  # rewrite the log with only the records that held
            write_all(log_fd, good)
        return blob

    def _replay(self, blob: StoredBlob, records: bytes) -> bytes:
        """Apply the log; an incomplete blob keeps only pieces whose data still hashes to
        their record; a complete one keeps them unchecked. Returns the records kept."""
        kept = bytearray()
        count = blob.geometry.count
        usable = len(records) - len(records) % STATEMENT_SIZE
        for start in range(0, usable, STATEMENT_SIZE):
            statement = PieceStatement.decode(records[start : start + STATEMENT_SIZE])
            piece = statement.piece
            if piece >= count or blob.is_verified(piece):
                continue
            if not blob.meta.complete:
                offset, length = blob.geometry.offset(piece), blob.geometry.length(piece)
                if hash_region(blob.fd, offset, length) != statement.sha_hex:
                    log.warning("store: %s piece %d failed re-verification", blob.task_id, piece)
                    continue
            blob.have |= 1 << piece
            blob.verified_count += 1
            blob.statements[piece] = statement
            kept += records[start : start + STATEMENT_SIZE]
        if blob.meta.complete:
            if blob.all_verified:
                blob.unchecked = full(count)
            else:
                log.warning("store: %s marked complete but its log is short; re-verifying", blob.task_id)
                blob.meta = BlobMeta(**{**asdict(blob.meta), "complete": False})
                self._write_meta(blob.meta)
                blob.have, blob.verified_count = 0, 0
                blob.statements.clear()
                return self._replay(blob, records)
        return bytes(kept)

    def _unlink(self, task_id: str) -> None:
        for suffix in (".data", ".pieces", ".json", ".json.tmp"):
            (self.root / f"{task_id}{suffix}").unlink(missing_ok=True)


def _reserve(fd: int, size: int) -> None:
    """Give the file its full size, with the blocks reserved where the file system can:
    a full disk then fails here, at once, instead of in the middle of a download."""
    try:
        os.ftruncate(fd, size)
        if size:
            os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return  # no reservation on this file system: the writes will tell
        if exc.errno == errno.ENOSPC:
            raise StoreFull(f"disk full: no room for {size} bytes") from exc
        raise StoreWriteError(f"reserving {size} bytes: {exc.strerror or exc}") from exc
