"""Serving a blob to containerd: from the swarm, verified, with the upstream as fallback.

1. Its size (for ``Range`` and ``Content-Length``) and this node's right to pull it come
   from the cluster (``cluster``: the supernode knows each blob a verified manifest of the
   repository references, and checks the node's credential once per repository); when
   the cluster cannot answer, from a ``HEAD`` upstream.
2. The bytes come from the local peer as its pieces land (in order, each verified).
   If the swarm cannot serve, before or in the middle of the transfer, the rest comes
   from the upstream directly (a ``Range`` request from where the swarm stopped; for a
   whole blob from its first byte, below): the
   client sees a slower pull, not a failed one. A ``Range`` request is served from the
   swarm only once the whole blob is verified (``peer.reader``), else from upstream: its
   client never reaches the held-back last byte, so nothing else would stop a lie.
3. Bytes from the swarm are verified already (each piece against its signed sha256, the
   last one only after the whole digest), so the proxy does not hash them again. Bytes
   of a whole blob from the upstream are: the read starts at the blob's first byte
   (what the swarm sent is hashed again, not sent again), and the last chunk is held
   back until the sha256 matched the digest; if it does not, the connection is cut
   before the last byte. The peer keeps nothing it could not verify.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from registry_proxy.cluster import ClusterRegistry, ask_cluster
from registry_proxy.errors import OciError
from registry_proxy.paths import DistributionPath
from swarmpull.core.blobs import BlobRequest, DownloadFailed, WrongSize
from swarmpull.core.rates import Priority
from swarmpull.core.registry_questions import BlobQuestion
from swarmpull.edges.registry import RegistryError, Upstream
from swarmpull.edges.registry.client import RegistryClient

log = logging.getLogger(__name__)
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()  # the one blob of size 0

CHUNK = 256 * 1024
_RANGE = re.compile(r"^bytes=(\d{0,19})-(\d{0,19})\Z")  # longer numbers: not a range we serve


class BlobSource(Protocol):
    """What the proxy needs from the node's peer: a blob's verified bytes, in order."""

    def read(self, request: BlobRequest, start: int, end: int, told: int) -> AsyncIterator[memoryview]:
        """Bytes ``[start, end)`` of the blob as they are verified; WrongSize when the blob
        is not ``told`` bytes; DownloadFailed when the swarm cannot serve them (the proxy
        then reads the rest from the registry)."""


@dataclass(frozen=True, slots=True)
class BlobQuery:
    path: DistributionPath
    upstream: Upstream
    client_auth: str | None


async def head_blob(
    client: RegistryClient, query: BlobQuery, cluster: ClusterRegistry | None
) -> web.Response:
    """A blob's metadata."""
    size = await _size(client, query, cluster)
    _not_falsely_empty(query, size)
    return web.Response(
        headers={
            "Docker-Content-Digest": query.path.reference,
            "Content-Type": "application/octet-stream",
            "Content-Length": str(size),
            "Accept-Ranges": "bytes",
        }
    )


async def get_blob(
    request: web.Request,
    client: RegistryClient,
    query: BlobQuery,
    source: BlobSource | None,
    cluster: ClusterRegistry | None,
) -> web.StreamResponse:
    size = await _size(client, query, cluster)
    start, end = _byte_range(request.headers.get("Range"), size)
    whole = (start, end) == (0, size)
    resp = web.StreamResponse(
        status=200 if whole else 206,
        headers={
            "Docker-Content-Digest": query.path.reference,
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
        },
    )
    resp.content_length = end - start
    if not whole:
        resp.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    digest = query.path.digest
    if digest is None:
        raise OciError(400, "DIGEST_INVALID", f"a blob is named by its digest, not {query.path.reference!r}")
    _not_falsely_empty(query, size)
    checked = _Checked(digest.hex) if whole else None
    held: bytes | memoryview | None = None
    try:
        async for chunk in _chunks(client, query, source, (start, end, size), checked):
            if not resp.prepared:
                await resp.prepare(request)
            if held is not None:
                await resp.write(held)
            held = chunk
        if checked is not None:
            checked.verify()
        if not resp.prepared:
            await resp.prepare(request)
        if held is not None:
            await resp.write(held)
        await resp.write_eof()
    except (OciError, RegistryError) as exc:
        if not resp.prepared:
            raise
        _cut(request, f"{digest}: {exc}")
    except _Mismatch as exc:
        _cut(request, str(exc))
    except ConnectionResetError:  # aiohttp's "cannot write to closing transport" is one
        log.info("%s: the client left before the end", digest)
    return resp


def _not_falsely_empty(query: BlobQuery, size: int) -> None:
    """An upstream (or the cluster) that says a blob is empty is believed only for the
    empty blob: no byte of it would be hashed before it was served."""
    digest = query.path.digest
    if size == 0 and digest is not None and digest.hex != EMPTY_SHA256:
        raise OciError(502, "UNKNOWN", f"upstream says {digest} is empty: not the empty blob's digest")


class _Mismatch(Exception):
    pass


class _Checked:
    """A whole blob's digest over what the upstream sends (none of it when the swarm
    sends every byte: those are verified already)."""

    def __init__(self, hex_digest: str) -> None:
        self._expected = hex_digest
        self._sha: hashlib._Hash | None = None

    def feed(self, chunk: bytes | memoryview) -> None:
        if self._sha is None:
            self._sha = hashlib.sha256()
        self._sha.update(chunk)

    def verify(self) -> None:
        if self._sha is not None and self._sha.hexdigest() != self._expected:
            raise _Mismatch(f"content of sha256:{self._expected} hashes to sha256:{self._sha.hexdigest()}")


def _cut(request: web.Request, why: str) -> None:
    """Close the connection before the last byte: the client cannot take this as whole."""
    log.warning("cutting a blob transfer short: %s", why)
    if request.transport is not None:
        request.transport.close()


async def _chunks(
    client: RegistryClient,
    query: BlobQuery,
    source: BlobSource | None,
    span: tuple[int, int, int],
    checked: _Checked | None,
) -> AsyncIterator[bytes | memoryview]:
    """Bytes ``[start, end)``: from the swarm while it serves, then from upstream. With
    ``checked`` (a whole blob) the upstream is read from the first byte and all of it is
    fed to the digest; what the swarm sent already is not yielded again. ``span``: start,
    end, and the blob's size as the manifest's descriptor gave it."""
    start, end, size = span
    offset = start
    if source is not None and end > start:
        authorization = query.client_auth or client.authorization(query.upstream, query.path.name)
        headers = {"Authorization": authorization} if authorization else {}
        url = query.upstream.url(query.path.name, "blobs", query.path.reference)
        request = BlobRequest(url, query.path.digest, headers, Priority.FOREGROUND)
        try:
            async for chunk in source.read(request, start, end, size):
                yield chunk
                offset += len(chunk)
            return
        except WrongSize as exc:  # the manifest lied about it: no byte is served as that blob
            raise OciError(
                502, "UNKNOWN", f"the registry's descriptor does not fit the blob: {exc}"
            ) from None
        except DownloadFailed as exc:
            if exc.stopping:  # not a reason to read the upstream: pull again, from the next node
                raise OciError(
                    503, "UNKNOWN", f"this node is shutting down: {exc}", {"Retry-After": "1"}
                ) from None
            log.warning(
                "the swarm could not serve %s (%s): reading the rest from upstream", query.path.reference, exc
            )
    if offset >= end:
        return
    sent, offset = offset, offset if checked is None else start
    async for chunk in _from_upstream(client, query, offset, end):
        if checked is not None:
            checked.feed(chunk)
        if offset + len(chunk) > sent:
            yield chunk[max(0, sent - offset) :]
        offset += len(chunk)


async def _from_upstream(
    client: RegistryClient, query: BlobQuery, start: int, end: int
) -> AsyncIterator[bytes]:
    path = query.path
    resp = await client.send(
        "GET",
        query.upstream,
        path.name,
        "blobs",
        path.reference,
        headers={"Range": f"bytes={start}-{end - 1}"},
        client_auth=query.client_auth,
        stream=True,
    )
    try:
        if resp.status not in (200, 206):
            raise OciError(502, "UNKNOWN", f"upstream answered {resp.status} for {path.reference}")
        skip = start if resp.status == 200 else 0  # a registry that ignores Range
        remaining = end - start
        async for chunk in resp.content.iter_chunked(CHUNK):
            if skip:
                cut = min(skip, len(chunk))
                chunk, skip = chunk[cut:], skip - cut
            if chunk:
                chunk = chunk[:remaining]
                remaining -= len(chunk)
                yield chunk
            if remaining <= 0:
                return
        if remaining > 0:
            raise OciError(502, "UNKNOWN", f"upstream closed {path.reference} {remaining} bytes short")
    finally:
        resp.release()


async def _size(client: RegistryClient, query: BlobQuery, cluster: ClusterRegistry | None) -> int:
    """The blob's size, from the cluster if it can answer, else from a HEAD upstream."""
    path = query.path
    if cluster is not None and path.digest is not None:
        question = BlobQuestion(query.upstream.host, path.name, path.digest)
        descriptor = await ask_cluster(
            cluster.blob_descriptor, question, client, query.upstream, query.client_auth
        )
        if descriptor is not None:
            return descriptor.size
    return await _upstream_size(client, query)


async def _upstream_size(client: RegistryClient, query: BlobQuery) -> int:
    path = query.path
    resp = await client.send(
        "HEAD", query.upstream, path.name, "blobs", path.reference, client_auth=query.client_auth
    )
    resp.release()
    if resp.status == 404:
        raise OciError(
            404, "BLOB_UNKNOWN", f"blob {path.reference} is not in {path.name} at {query.upstream.host}"
        )
    if resp.status in (401, 403):
        challenge = resp.headers.get("WWW-Authenticate")
        code = "UNAUTHORIZED" if resp.status == 401 else "DENIED"
        raise OciError(
            resp.status,
            code,
            f"{query.upstream.host} refused",
            {"WWW-Authenticate": challenge} if challenge else None,
        )
    if resp.status != 200 or resp.content_length is None:
        raise OciError(502, "UNKNOWN", f"upstream answered {resp.status} for {path.reference}")
    return resp.content_length


def _byte_range(header: str | None, size: int) -> tuple[int, int]:
    """``[start, end)`` for a ``Range`` header (one range); the whole blob without one."""
    if not header:
        return 0, size
    match = _RANGE.match(header.strip())
    if not match or not (match.group(1) or match.group(2)):
        return 0, size  # not a single byte range: serve it all, as RFC 9110 allows
    first, last = match.group(1), match.group(2)
    if not first:  # bytes=-N: the last N bytes
        start, end = max(0, size - int(last)), size
    else:
        start = int(first)
        end = min(int(last) + 1, size) if last else size
    if start >= size or start >= end:
        raise OciError(
            416,
            "UNSUPPORTED",
            f"range {header} outside blob of {size} bytes",
            {"Content-Range": f"bytes */{size}"},
        )
    return start, end
