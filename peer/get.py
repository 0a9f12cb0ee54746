"""``swarmpull get``: one file through the swarm, into a file that appears only when whole.

Through the local peer daemon's API (``--peer``), or as a one-shot peer of its own that
joins the swarm for this file only (``--supernode``). Bytes go to a hidden temporary file
next to the output; it is renamed into place only when every byte arrived and the digest
(when given) matched, and removed on any failure.

Through the daemon, the daemon verifies the whole blob (its digest is computed once, as
the pieces land) and answers with the verified file's path in its store (``/api/v1/file``);
``get`` copies it in the kernel (``copy_file_range``), without hashing or streaming it a
second time. A daemon whose files this user cannot open, or an older one, streams it
instead (``/api/v1/fetch``), hashed on the way. The summary line on stderr gives the CPU
seconds per GB spent here and, through a daemon, by the daemon for this request.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from peer.config import PeerConfig
from peer.daemon import PeerDaemon
from peer.reader import read_blob
from swarmpull.core.blobs import BlobRequest, DownloadFailed
from swarmpull.core.digest import Digest
from swarmpull.core.protocol import API
from swarmpull.core.rates import Priority
from swarmpull.core.units import format_size
from swarmpull.edges.http import error_message
from swarmpull.edges.progress import ProgressBar


class GetError(Exception):
    """Why a ``get`` failed, in one line for the user."""


async def get_file(
    url: str,
    output: Path,
    *,
    digest: Digest | None = None,
    peer_api: str | None = None,
    supernodes: tuple[str, ...] = (),
    headers: dict[str, str] | None = None,
    priority: Priority = Priority.FOREGROUND,
) -> int:
    """Download ``url`` to ``output``; returns the size. Raises GetError."""
    started, cpu = time.monotonic(), _cpu_seconds()
    progress = ProgressBar(output.name)
    daemon_cpu: float | None = None
    if peer_api is not None:
        body = _request_body(url, digest, headers or {}, priority)
        placed = await _placed_by_daemon(peer_api, body)
        size = None
        if placed is not None:
            daemon_cpu = float(placed.get("cpu_seconds") or 0.0)
            size = await asyncio.to_thread(_copy_placed, placed, output, digest)
        if size is None:
            chunks = _through_daemon(peer_api, body, progress)
            size = await _write(chunks, output, digest, progress)
        _summary(output, size, started, cpu, daemon_cpu)
        return size
    data_dir = Path(tempfile.mkdtemp(prefix="swarmpull-get-"))
    daemon = PeerDaemon(
        PeerConfig(data_dir=data_dir, supernodes=supernodes, api_listen=None, cache_size=None)
    )
    try:
        await daemon.start()
        chunks = _one_shot(daemon, BlobRequest(url, digest, headers or {}, priority), progress)
        size = await _write(chunks, output, digest, progress)
    finally:
        await daemon.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    _summary(output, size, started, cpu, None)
    return size


def _request_body(
    url: str, digest: Digest | None, headers: dict[str, str], priority: Priority
) -> dict[str, object]:
    body: dict[str, object] = {"url": url, "headers": headers, "priority": priority.name.lower()}
    if digest is not None:
        body["digest"] = str(digest)
    return body


def _summary(output: Path, size: int, started: float, cpu: float, daemon_cpu: float | None) -> None:
    seconds = max(time.monotonic() - started, 1e-6)
    gigabytes = max(size / 1e9, 1e-9)
    line = (
        f"{output.name}: {format_size(size)} in {seconds:.2f} s ({size / seconds / 1e9:.2f} GB/s), "
        f"CPU {(_cpu_seconds() - cpu) / gigabytes:.2f} s/GB here"
    )
    if daemon_cpu is not None:
        line += f", {daemon_cpu / gigabytes:.2f} s/GB in the daemon"
    print(line, file=sys.stderr, flush=True)


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


async def _placed_by_daemon(api: str, body: dict[str, object]) -> dict[str, Any] | None:
    """The daemon's answer to ``/api/v1/file``: the verified blob's path and size; None
    when the daemon does not offer it (then the blob is streamed)."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=None)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(f"{api.rstrip('/')}{API}/file", json=body) as resp,
        ):
            payload = await resp.json(content_type=None)
            if resp.status == 404 and not isinstance(payload, dict):
                return None
            if resp.status == 404 and payload.get("error", {}).get("code") == "NOT_FOUND":
                return None  # a daemon without /file
            if resp.status != 200:
                raise GetError(error_message(payload, f"the peer daemon answered {resp.status}"))
    except aiohttp.ClientConnectorError:
        raise GetError(
            f"no peer daemon answers at {api} (start `swarmpull peer`, or pass --supernode URL)"
        ) from None
    except (aiohttp.ClientError, ValueError) as exc:
        raise GetError(f"talking to the peer daemon at {api}: {exc}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("path"), str):
        raise GetError("the peer daemon answered without a path")
    if not isinstance(payload.get("size"), int) or payload["size"] < 0:
        raise GetError("the peer daemon answered without a size")
    return payload


def _copy_placed(placed: dict[str, Any], output: Path, digest: Digest | None) -> int | None:
    """Copy the daemon's verified file to ``output`` (through a temporary file next to
    it); None when this user may not read it (then it is streamed instead)."""
    size = placed["size"]
    if digest is not None and placed.get("digest") != str(digest):
        raise GetError(f"the peer daemon verified digest {placed.get('digest')}, expected {digest}")
    try:
        src = os.open(placed["path"], os.O_RDONLY)
    except (PermissionError, FileNotFoundError):
        return None
    try:
        if os.fstat(src).st_size != size:
            raise GetError(f"the store's file is not {size} bytes long")
        with _temporary(output) as (dst, tmp):
            _copy_range(src, dst, size)
            os.replace(tmp, output)  # the file is whole: in place (closed on the way out)
    finally:
        os.close(src)
    return size


def _copy_range(src: int, dst: int, size: int) -> None:
    """``size`` bytes from ``src`` to ``dst``, in the kernel: ``copy_file_range`` (a
    reflink where the file system can), ``sendfile`` where it cannot cross file systems."""
    done = 0
    use_copy = True
    while done < size:
        try:
            if use_copy:
                count = os.copy_file_range(src, dst, size - done, done, done)
            else:
                count = os.sendfile(dst, src, done, size - done)
        except OSError as exc:
            if use_copy and exc.errno in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                use_copy = False
                os.lseek(dst, done, os.SEEK_SET)
                continue
            raise GetError(f"copying the blob: {exc.strerror or exc}") from None
        if count == 0:
            raise GetError(f"the store's file ended after {done} of {size} bytes")
        done += count


@contextlib.contextmanager
def _temporary(output: Path) -> Any:
    """A hidden file next to ``output`` (fd, path), removed unless renamed into place."""
    output = output.absolute()
    fd, name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".part", dir=output.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # as if created by open(): mkstemp makes it private
    tmp = Path(name)
    try:
        yield fd, tmp
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


async def _through_daemon(api: str, body: dict[str, object], progress: ProgressBar) -> AsyncIterator[bytes]:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=600)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session,
            session.post(f"{api.rstrip('/')}{API}/fetch", json=body) as resp,
        ):
            if resp.status != 200:
                payload = await resp.json(content_type=None)
                raise GetError(error_message(payload, f"the peer daemon answered {resp.status}"))
            progress.total = resp.content_length
            async for chunk in resp.content.iter_chunked(256 * 1024):
                yield chunk
    except aiohttp.ClientConnectorError:
        raise GetError(
            f"no peer daemon answers at {api} (start `swarmpull peer`, or pass --supernode URL)"
        ) from None
    except aiohttp.ClientPayloadError:
        raise GetError("the peer daemon cut the transfer: the blob failed verification") from None
    except (aiohttp.ClientError, ValueError) as exc:
        raise GetError(f"talking to the peer daemon at {api}: {exc}") from None


async def _one_shot(daemon: PeerDaemon, request: BlobRequest, progress: ProgressBar) -> AsyncIterator[bytes]:
    download = daemon.ensure(request)
    try:
        blob = await download.wait_ready()
        progress.total = blob.meta.size
        async for chunk in read_blob(download):
            yield bytes(chunk)
    except DownloadFailed as exc:
        raise GetError(str(exc)) from None


async def _write(
    chunks: AsyncIterator[bytes], output: Path, digest: Digest | None, progress: ProgressBar
) -> int:
    output = output.absolute()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".part", dir=output.parent)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # as if created by open(): mkstemp makes it private
    try:
        hasher = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as out:
            async for chunk in chunks:
                out.write(chunk)
                hasher.update(chunk)
                size += len(chunk)
                progress.advance(len(chunk))
        if progress.total is not None and size != progress.total:
            raise GetError(f"transfer ended after {size} of {progress.total} bytes")
        if digest is not None and hasher.hexdigest() != digest.hex:
            raise GetError(f"downloaded content has digest sha256:{hasher.hexdigest()}, expected {digest}")
        os.replace(tmp, output)
        progress.finish()
        return size
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
