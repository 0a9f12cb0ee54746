"""Bytes to and from a blob's data file: writes that loop until every byte is down,
hashing a region, reserving the file's blocks, and mapping it into memory so a socket
can receive straight into the page cache."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os

from swarmpull.edges.store.errors import StoreFull, StoreWriteError

_HASH_CHUNK = 1 << 20
MADV_POPULATE_WRITE = 23  # Linux 5.14; not in the mmap module of Python 3.11


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


def reserve(fd: int, size: int) -> bool:
    """Give the file its full size, with the blocks reserved where the file system can:
    a full disk then fails here, at once, instead of in the middle of a download. Returns
    whether the blocks are reserved (only then may the file be written through a mapping:
    a store into an unreserved page of a full disk is a SIGBUS, not an error)."""
    try:
        os.ftruncate(fd, size)
        if size:
            os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return False  # no reservation on this file system: the writes will tell
        if exc.errno == errno.ENOSPC:
            raise StoreFull(f"disk full: no room for {size} bytes") from exc
        raise StoreWriteError(f"reserving {size} bytes: {exc.strerror or exc}") from exc
    return True


def is_reserved(fd: int, size: int) -> bool:
    """Whether every block of the file's first ``size`` bytes is allocated (a file reserved
    by an earlier run): ``posix_fallocate`` again is cheap and says so."""
    try:
        if size:
            os.posix_fallocate(fd, 0, size)
    except OSError:
        return False
    return True


class BlobMapping:
    """A shared, writable mapping of a reserved data file: pieces land in it straight
    from the socket, and are hashed from it, so the bytes verified are the file's bytes
    (the page cache) with no copy in between. Only for files whose blocks are reserved."""

    def __init__(self, fd: int, size: int) -> None:
        self._map: mmap.mmap | None = mmap.mmap(fd, size) if size else None
        self.view = memoryview(self._map) if self._map is not None else memoryview(b"")

    def region(self, offset: int, length: int) -> memoryview:
        """``length`` bytes at ``offset``, their pages made present first, so that running
        out of memory or disk is an OSError here rather than a signal inside a recv."""
        if self._map is None:
            raise ValueError("the blob is empty")
        with contextlib.suppress(OSError):  # older kernels: the pages fault in as written
            start = offset - offset % mmap.PAGESIZE
            self._map.madvise(MADV_POPULATE_WRITE, start, length + offset - start)
        return self.view[offset : offset + length]

    def sha256(self, offset: int, length: int, also: hashlib._Hash | None = None) -> str:
        """The sha256 of a region (hashlib drops the GIL on buffers this large)."""
        region = self.view[offset : offset + length]
        if also is not None:
            also.update(region)
        return hashlib.sha256(region).hexdigest()

    def close(self) -> None:
        """Unmap, unless a transfer still holds a view of it: then the mapping goes with
        the last view (a removed blob's file is unlinked, its pages freed then)."""
        with contextlib.suppress(BufferError):
            self.view.release()
        if self._map is not None:
            with contextlib.suppress(BufferError):
                self._map.close()
        self._map = None
