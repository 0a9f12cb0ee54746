"""``swarmpull get``: one file through the swarm, into a file that appears only when whole.

Through the local peer daemon's API (``--peer``), or as a one-shot peer of its own that
joins the swarm for this file only (``--supernode``). Bytes go to a hidden temporary file
next to the output, hashed on the way; it is renamed into place only when every byte
arrived and the digest (when given) matched, and removed on any failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from peer.config import PeerConfig
from peer.daemon import PeerDaemon
from peer.reader import read_blob
from swarmpull.core.blobs import BlobRequest, DownloadFailed
from swarmpull.core.digest import Digest
from swarmpull.core.protocol import API
from swarmpull.core.rates import Priority
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
    progress = ProgressBar(output.name)
    if peer_api is not None:
        chunks = _through_daemon(peer_api, url, digest, headers or {}, priority, progress)
        return await _write(chunks, output, digest, progress)
    data_dir = Path(tempfile.mkdtemp(prefix="swarmpull-get-"))
    daemon = PeerDaemon(
        PeerConfig(data_dir=data_dir, supernodes=supernodes, api_listen=None, cache_size=None)
    )
    try:
        await daemon.start()
        chunks = _one_shot(daemon, BlobRequest(url, digest, headers or {}, priority), progress)
        return await _write(chunks, output, digest, progress)
    finally:
        await daemon.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


async def _through_daemon(
    api: str,
    url: str,
    digest: Digest | None,
    headers: dict[str, str],
    priority: Priority,
    progress: ProgressBar,
) -> AsyncIterator[bytes]:
    body: dict[str, object] = {"url": url, "headers": headers, "priority": priority.name.lower()}
    if digest is not None:
        body["digest"] = str(digest)
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
