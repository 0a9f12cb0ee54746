"""``swarmpull get``: one file through the swarm, into a file that appears only when whole.

Through the local peer daemon's API (``--peer``), or as a one-shot peer of its own that
joins the swarm for this file only (``--supernode``). Bytes go to a hidden temporary file
next to the output, hashed on the way; it is renamed into place only when every byte
arrived and the digest (when given) matched, and removed on any failure. To stdout
(``-o -``) bytes flow as they arrive: the daemon holds back a blob's last bytes until its
digest matched, so a reader of a failed transfer sees it cut short (and a non-zero exit).

Through the daemon, a client that hangs up (Ctrl-C) cancels the daemon's download unless
another client still reads it; the pieces verified so far stay in the daemon's store.
"""

from __future__ import annotations

import contextlib
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


class GetError(Exception):
    """Why a ``get`` failed, in one line for the user."""


@dataclass(slots=True)
class Fetched:
    """What a ``get`` delivered: its size, the bytes by source (``local``: already on the
    node; ``peer``, ``seed``, ``upstream``), and why the swarm was bypassed, if it was."""

    size: int = 0
    sources: dict[str, int] = field(default_factory=dict)
    bypassed: str | None = None

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
) -> Fetched:
    """Download ``url`` to ``output`` (None: stdout). Raises GetError."""
    progress = ProgressBar(output.name if output is not None else "-")
    fetched = Fetched()
    if peer_api is not None:
        chunks = _through_daemon(peer_api, url, digest, headers or {}, priority, progress, fetched)
        fetched.size = await _deliver(chunks, output, digest, progress)
        return fetched
    data_dir = Path(tempfile.mkdtemp(prefix="swarmpull-get-"))
    daemon = PeerDaemon(
        PeerConfig(data_dir=data_dir, supernodes=supernodes, api_listen=None, cache_size=None)
    )
    try:
        await daemon.start()
        download = daemon.ensure(BlobRequest(url, digest, headers or {}, priority))
        fetched.size = await _deliver(_one_shot(download, progress), output, digest, progress)
        fetched.take(download.summary())
        return fetched
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
    fetched: Fetched,
) -> AsyncIterator[bytes]:
    """The blob's bytes from the daemon's local API; once they are all in, ``fetched``
    gets the daemon's account of where they came from."""
    body: dict[str, object] = {"url": url, "headers": headers, "priority": priority.name.lower()}
    if digest is not None:
        body["digest"] = str(digest)
    api = api.rstrip("/")
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
                    why = (await _summary(session, api, task_id)).get("error")
                    raise GetError(why or "the peer daemon cut the transfer short") from None
            fetched.take(await _summary(session, api, task_id))
    except aiohttp.ClientConnectorError:
        raise GetError(
            f"no peer daemon answers at {api} (start `swarmpull peer`, or pass --supernode URL)"
        ) from None
    except (aiohttp.ClientError, ValueError) as exc:
        raise GetError(f"talking to the peer daemon at {api}: {exc}") from None


async def _summary(session: aiohttp.ClientSession, api: str, task_id: str) -> dict[str, Any]:
    """The daemon's account of its latest download of ``task_id`` ({} if it has none)."""
    if not task_id:
        return {}
    async with session.get(f"{api}{API}/tasks/{task_id}") as resp:
        summary = await resp.json(content_type=None) if resp.status == 200 else {}
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
        _check(size, hasher.hexdigest(), digest, progress)
        os.replace(tmp, output)
        progress.finish()
        return size
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
