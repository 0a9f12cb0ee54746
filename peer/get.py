"""``swarmpull get``: one file through the swarm, into a file that appears only when whole.

Through the local peer daemon's API (``--peer``), or as a one-shot peer of its own that
joins the swarm for this file only (``--supernode``). Bytes go to a hidden temporary file
next to the output; it is renamed into place only when every byte arrived and the digest
(when given) matched, and removed on any failure. To stdout (``-o -``) bytes flow as they
arrive: the daemon holds back a blob's last bytes until its digest matched, so a reader
of a failed transfer sees it cut short (and a non-zero exit).

Through the daemon, the daemon verifies the whole blob (its digest is computed once, as
the pieces land) and answers with the verified file's path in its store (``/api/v1/file``);
``get`` copies it in the kernel (``copy_file_range``), without hashing or streaming it a
second time. A daemon whose files this user cannot open, or an older one, streams it
instead (``/api/v1/fetch``), hashed on the way; so does ``-o -``. Either way a client
that hangs up (Ctrl-C) cancels the daemon's download unless another client still wants
it; the pieces verified so far stay in the daemon's store. The daemon's account of the
download (bytes by source, a bypass) and the CPU seconds spent here and in the daemon
end up in ``Fetched``, for the summary line.
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
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from peer.config import PeerConfig
from peer.daemon import PeerDaemon
from peer.download import TaskDownload
from peer.reader import read_blob
from swarmpull.core.blobs import BlobRequest, DownloadFailed
from swarmpull.core.digest import Digest
from swarmpull.core.protocol import API
from swarmpull.core.rates import Priority
from swarmpull.edges.http import error_message
from swarmpull.edges.progress import ProgressBar
from swarmpull.edges.tls import ClusterTls


class GetError(Exception):
    """Why a ``get`` failed, in one line for the user."""


@dataclass(slots=True)
class Fetched:
    """What a ``get`` delivered: its size, the bytes by source (``local``: already on the
    node; ``peer``, ``seed``, ``upstream``), why the swarm was bypassed, if it was, and the
    CPU seconds spent in this process and (through a daemon that says) in the daemon."""

    size: int = 0
    sources: dict[str, int] = field(default_factory=dict)
    bypassed: str | None = None
    cpu_here: float = 0.0
    cpu_daemon: float | None = None

    def take(self, summary: dict[str, Any]) -> None:
        """Fill in from a download's summary (``TaskDownload.summary``)."""
        sources = summary.get("sources")
        if isinstance(sources, dict):
            self.sources = {str(k): int(v) for k, v in sources.items() if isinstance(v, int)}
        bypassed = summary.get("bypassed")
        self.bypassed = bypassed if isinstance(bypassed, str) else None


async def get_file(
    url: str,
    output: Path | None,
    *,
    digest: Digest | None = None,
    peer_api: str | None = None,
    supernodes: tuple[str, ...] = (),
    headers: dict[str, str] | None = None,
    priority: Priority = Priority.FOREGROUND,
    tls: ClusterTls | None = None,
) -> Fetched:
    """Download ``url`` to ``output`` (None: stdout), as a one-shot peer of ``supernodes``
    (with mutual TLS when ``tls``) or through the local daemon's ``peer_api``. Raises
    GetError."""
    cpu = _cpu_seconds()
    progress = ProgressBar(output.name if output is not None else "-")
    fetched = Fetched()
    if peer_api is not None:
        api = peer_api.rstrip("/")
        body = _request_body(url, digest, headers or {}, priority)
        # To a file: the daemon's verified file, copied. To stdout, from a daemon without
        # /file, or when this user may not read the store: streamed.
        placed = await _placed_by_daemon(api, body) if output is not None else None
        copied = None
        if placed is not None and output is not None:
            copied = await asyncio.to_thread(_copy_placed, placed, output, digest)
        if placed is not None and copied is not None:
            fetched.size = copied
            fetched.cpu_daemon = float(placed.get("cpu_seconds") or 0.0)
            fetched.take(await _account(api, str(placed.get("task_id") or "")))
        else:
            chunks = _through_daemon(api, body, progress, fetched)
            fetched.size = await _deliver(chunks, output, digest, progress)
        fetched.cpu_here = _cpu_seconds() - cpu
        return fetched
    data_dir = Path(tempfile.mkdtemp(prefix="swarmpull-get-"))
    daemon = PeerDaemon(
        PeerConfig(data_dir=data_dir, supernodes=supernodes, api_listen=None, cache_size=None, tls=tls)
    )
    try:
        await daemon.start()
        download = daemon.ensure(BlobRequest(url, digest, headers or {}, priority))
        fetched.size = await _deliver(_one_shot(download, progress), output, digest, progress)
        fetched.take(download.summary())
    finally:
        await daemon.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    fetched.cpu_here = _cpu_seconds() - cpu
    return fetched


def _request_body(
    url: str, digest: Digest | None, headers: dict[str, str], priority: Priority
) -> dict[str, object]:
    body: dict[str, object] = {"url": url, "headers": headers, "priority": priority.name.lower()}
    if digest is not None:
        body["digest"] = str(digest)
    return body


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


async def _through_daemon(
    api: str, body: dict[str, object], progress: ProgressBar, fetched: Fetched
) -> AsyncIterator[bytes]:
    """The blob's bytes from the daemon's local API; once they are all in, ``fetched``
    gets the daemon's account of where they came from."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=600)
    try:
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
            async with session.post(f"{api}{API}/fetch", json=body) as resp:
                if resp.status != 200:
                    payload = await resp.json(content_type=None)
                    raise GetError(error_message(payload, f"the peer daemon answered {resp.status}"))
                task_id = resp.headers.get("X-Swarmpull-Task", "")
                progress.total = resp.content_length
                try:
                    async for chunk in resp.content.iter_chunked(256 * 1024):
                        yield chunk
                except aiohttp.ClientPayloadError:
                    # The daemon cut the transfer short; its account says why (the digests).
                    why = (await _account(api, task_id, session)).get("error")
                    raise GetError(why or "the peer daemon cut the transfer short") from None
            fetched.take(await _account(api, task_id, session))
    except aiohttp.ClientConnectorError:
        raise GetError(
            f"no peer daemon answers at {api} (start `swarmpull peer`, or pass --supernode URL)"
        ) from None
    except (aiohttp.ClientError, ValueError) as exc:
        raise GetError(f"talking to the peer daemon at {api}: {exc}") from None


async def _account(api: str, task_id: str, session: aiohttp.ClientSession | None = None) -> dict[str, Any]:
    """The daemon's account of its latest download of ``task_id`` ({} if it has none)."""
    if not task_id:
        return {}
    try:
        async with contextlib.AsyncExitStack() as stack:
            if session is None:
                session = await stack.enter_async_context(aiohttp.ClientSession())
            async with session.get(f"{api}{API}/tasks/{task_id}") as resp:
                summary = await resp.json(content_type=None) if resp.status == 200 else {}
    except (aiohttp.ClientError, ValueError):
        return {}  # an account is a courtesy: the blob itself was verified
    return summary if isinstance(summary, dict) else {}


async def _one_shot(download: TaskDownload, progress: ProgressBar) -> AsyncIterator[bytes]:
    try:
        blob = await download.wait_ready()
        progress.total = blob.meta.size
        async for chunk in read_blob(download):
            yield bytes(chunk)
    except DownloadFailed as exc:
        raise GetError(str(exc)) from None


async def _deliver(
    chunks: AsyncIterator[bytes], output: Path | None, digest: Digest | None, progress: ProgressBar
) -> int:
    if output is None:
        return await _write_stdout(chunks, digest, progress)
    return await _write(chunks, output, digest, progress)


async def _write_stdout(chunks: AsyncIterator[bytes], digest: Digest | None, progress: ProgressBar) -> int:
    out = sys.stdout.buffer
    hasher = hashlib.sha256()
    size = 0
    async for chunk in chunks:
        out.write(chunk)
        hasher.update(chunk)
        size += len(chunk)
        progress.advance(len(chunk))
    out.flush()
    _check(size, hasher.hexdigest(), digest, progress)
    progress.finish()
    return size


def _check(size: int, sha256_hex: str, digest: Digest | None, progress: ProgressBar) -> None:
    if progress.total is not None and size != progress.total:
        raise GetError(f"transfer ended after {size} of {progress.total} bytes")
    if digest is not None and sha256_hex != digest.hex:
        raise GetError(f"downloaded content has digest sha256:{sha256_hex}, expected {digest}")


async def _write(
    chunks: AsyncIterator[bytes], output: Path, digest: Digest | None, progress: ProgressBar
) -> int:
    try:
        with _temporary(output) as (fd, tmp):
            hasher = hashlib.sha256()
            size = 0
            with os.fdopen(fd, "wb", closefd=False) as out:
                async for chunk in chunks:
                    out.write(chunk)
                    hasher.update(chunk)
                    size += len(chunk)
                    progress.advance(len(chunk))
            _check(size, hasher.hexdigest(), digest, progress)
            os.replace(tmp, output.absolute())
    except OSError as exc:  # a full disk, a directory we may not write
        raise GetError(f"writing {output}: {exc.strerror or exc}") from None
    progress.finish()
    return size
