"""``PieceStore``: the blobs under one directory, their quota, and what a restart left."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import resource
import stat
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

from swarmpull.core.bitfield import full
from swarmpull.core.signing import STATEMENT_SIZE, PieceStatement
from swarmpull.core.tasks import validate_task_id
from swarmpull.edges.store.blob import FORMAT, BlobMeta, StoredBlob
from swarmpull.edges.store.disk import BlobMapping, is_reserved, reserve, write_all
from swarmpull.edges.store.errors import StoreError, StoreFull, StoreLocked, StoreWriteError

log = logging.getLogger(__name__)
MAX_META = 64 * 1024  # bytes: a blob's record is a few hundred


def blobs_for(fd_limit: int) -> int:
    """Blobs a store holds at most with ``fd_limit`` descriptors: each keeps two open (its
    data and its piece log), and the store takes an eighth of them (the listeners take up
    to three quarters, ``edges.listener``), so that many blobs never starve the sockets."""
    return max(16, fd_limit // 16)


class PieceStore:
    """Blobs on disk under ``root``, within ``quota`` bytes (None: no limit), at most
    ``max_blobs`` of them (None: ``blobs_for`` this process's descriptor limit), keeping
    at least ``min_free`` bytes of the file system free. Past either, the least recently
    used blob that nobody reads goes."""

    def __init__(
        self,
        root: Path,
        quota: int | None = None,
        on_evict: Callable[[str], None] | None = None,
        *,
        min_free: int = 0,
        on_piece: Callable[[StoredBlob], None] | None = None,
        on_corrupt: Callable[[StoredBlob, int], None] | None = None,
        mapped: bool = True,
        max_blobs: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.quota = quota
        self.max_blobs = max_blobs or blobs_for(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        self.min_free = min_free
        self.on_evict = on_evict
        self.on_piece = on_piece
        self.on_corrupt = on_corrupt
        self.mapped = mapped  # map reserved data files, so pieces can land without a copy
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
                if meta_path.is_symlink() or not meta_path.is_file():
                    raise ValueError("not a regular file")  # a link to /dev/zero is read for ever
                if meta_path.stat().st_size > MAX_META:
                    raise ValueError(f"larger than {MAX_META} bytes")
                raw = json.loads(meta_path.read_text())
                meta = BlobMeta(**raw)
                validate_task_id(meta.task_id)
                if meta_path.stem != meta.task_id:
                    raise ValueError("file name does not match task id")
                if meta.format != FORMAT:
                    raise ValueError(f"written in format {meta.format}, not {FORMAT}")
                _check_sizes(meta, self.quota)
            except (ValueError, TypeError, RecursionError) as exc:  # the disk is not trusted
                log.warning("store: removing unreadable %s: %s", meta_path.name, exc)
                self._unlink(meta_path.stem)
                continue
            data = self._data(meta.task_id)
            found.append((data.stat().st_mtime if data.exists() else 0, meta))
        for _, meta in sorted(found, key=lambda item: item[0]):
            try:
                blob = self._open(meta, create=False)
            except (OSError, StoreError) as exc:  # one blob the disk spoiled: not the daemon
                log.warning("store: removing %s: %s", meta.task_id, exc)
                self._unlink(meta.task_id)
                continue
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
        self.write_meta(meta)
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
        self.hold(blob)
        try:
            yield blob
        finally:
            self.release(blob)

    def hold(self, blob: StoredBlob) -> None:
        """Keep ``blob`` from eviction until ``release(blob)``."""
        blob.pins += 1
        blob.touch()

    def release(self, blob: StoredBlob) -> None:
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

    def next_tick(self) -> int:
        self._tick += 1
        return self._tick

    def piece_added(self, blob: StoredBlob) -> None:
        if self.on_piece is not None:
            self.on_piece(blob)

    def _short(self, used: int, size: int) -> bool:
        """Whether one more blob of ``size`` bytes would break the count, the quota or the
        free-space floor."""
        if len(self._blobs) >= self.max_blobs or (self.quota is not None and used + size > self.quota):
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
        if len(self._blobs) >= self.max_blobs:
            raise StoreFull(f"cache full: {len(self._blobs)} blobs, the most it holds, are all in use")
        if self.quota is not None and used + size > self.quota:
            raise StoreFull(
                f"cache full: {used} of {self.quota} bytes are held by blobs in use; cannot fit {size} more"
            )
        raise StoreFull(f"disk full: {size} bytes would leave less than {self.min_free} free in {self.root}")

    def data_path(self, task_id: str) -> Path:
        """Where a blob's bytes are (a verified, complete blob's may be copied from there)."""
        return self.root / f"{task_id}.data"

    def _data(self, task_id: str) -> Path:
        return self.data_path(task_id)

    def write_meta(self, meta: BlobMeta) -> None:
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
        # Never through a link: a data dir's symlink would have us truncate what it names.
        fd = os.open(data, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        mapping = log_fd = None
        try:
            length = _regular_length(fd, data)
            if length == meta.size:
                reserved = is_reserved(fd, meta.size)
            elif create:
                reserved = reserve(fd, meta.size)
            else:  # a restored record the data file does not match: nothing to keep
                raise StoreError(f"its data file holds {length} bytes, not the {meta.size} of its record")
            mapping = BlobMapping(fd, meta.size) if reserved and meta.size and self.mapped else None
            log_fd = os.open(log_path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
            records = b"" if create else os.pread(log_fd, _regular_length(log_fd, log_path), 0)
        except BaseException:
            if log_fd is not None:
                os.close(log_fd)
            if mapping is not None:
                mapping.close()
            os.close(fd)
            raise
        blob = StoredBlob(self, meta, fd, log_fd, mapping)
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
            if not blob.meta.complete and blob.hash_piece(piece) != statement.sha_hex:
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
                self.write_meta(blob.meta)
                blob.have, blob.verified_count = 0, 0
                blob.statements.clear()
                return self._replay(blob, records)
        return bytes(kept)

    def _unlink(self, task_id: str) -> None:
        for suffix in (".data", ".pieces", ".json", ".json.tmp"):
            (self.root / f"{task_id}{suffix}").unlink(missing_ok=True)


def _check_sizes(meta: BlobMeta, quota: int | None) -> None:
    """ValueError for a record whose sizes no blob has (a disk's or a hand's garbage)."""
    for name in ("size", "piece_size"):
        value = getattr(meta, name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{name} is not a whole number: {value!r}")
    if meta.size < 0 or meta.piece_size <= 0:
        raise ValueError(f"impossible sizes: {meta.size} bytes in pieces of {meta.piece_size}")
    if quota is not None and meta.size > quota:
        raise ValueError(f"{meta.size} bytes: more than the cache holds ({quota})")


def _regular_length(fd: int, path: Path) -> int:
    """The length of the regular file open at ``fd``; StoreError for anything else."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise StoreError(f"{path.name} is not a regular file")
    return info.st_size
