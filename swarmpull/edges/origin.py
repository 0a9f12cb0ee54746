"""Reading a blob from its upstream into the store, piece by piece.

The supernode's back-to-source uses it (once per task), and so does a peer that has to
fetch directly because no supernode answers. ``UpstreamFetch`` streams the upstream body
in order, writes each piece into the store, hashes it as it arrives and reports it the
moment it is complete, so peers start long before the blob is done. A broken read
resumes with a ``Range`` request at the first missing piece. The whole blob is hashed
along the way; when a digest is expected, the last piece is reported only after the
whole digest matched, so nobody can complete a blob that is wrong.

With ``defer=True`` (a peer's direct fetch, where no per-piece hashes are known in
advance) pieces are written but not recorded as verified; the caller records them once
the whole blob's digest matched.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from swarmpull.core.digest import Digest
from swarmpull.core.tasks import redact_url
from swarmpull.edges.http import PEER_HEADER
from swarmpull.edges.store import PieceWriter, StoredBlob

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """How blobs are read from upstreams."""

    connect_timeout: float = 10.0
    """Seconds to connect to an upstream."""
    stall_timeout: float = 30.0
    """Seconds without a byte from an upstream before the read is retried."""
    attempts: int = 4
    """Reads of one blob before giving up; each retry resumes at the first missing piece."""
    retry_delay: float = 0.5
    """Seconds before the first retry; doubled on each further one."""

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("UpstreamConfig.attempts must be at least 1")


class UpstreamError(Exception):
    """The upstream could not give the blob. ``definitive`` errors are not retried."""

    def __init__(self, message: str, status: int | None = None, definitive: bool = False):
        super().__init__(message)
        self.status = status
        self.definitive = definitive


class Throttle(Protocol):
    """Caps on one upstream: a connection slot per read, and bandwidth chunk by chunk."""

    def connection(self) -> AbstractAsyncContextManager[None]: ...

    async def acquire(self, count: int) -> None: ...


class UpstreamEvents(Protocol):
    """What the fetch reports, on the loop that runs it."""

    def geometry(self, size: int) -> StoredBlob:
        """The blob's size is known: create (and return) its place in the seed store."""

    def digest(self, digest: Digest) -> None:
        """The whole blob's digest, known before its last piece is published."""

    def piece(self, index: int, sha: str) -> None:
        """Piece ``index`` is in the store with this sha256 (recorded, unless deferred)."""


class UpstreamFetch:
    """Reads one blob from ``url`` into the store."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        headers: Callable[[], dict[str, str]],
        expected: Digest | None,
        events: UpstreamEvents,
        config: UpstreamConfig,
        on_bytes: Callable[[int], None] | None = None,
        defer: bool = False,
        throttle: Throttle | None = None,
    ) -> None:
        self._session = session
        self._url = url
        self._headers = headers  # read at every attempt: the newest token wins
        self._expected = expected
        self._events = events
        self._config = config
        self._on_bytes = on_bytes
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=config.connect_timeout, sock_read=config.stall_timeout
        )
        self._blob: StoredBlob | None = None
        self._defer = defer
        self._elsewhere: frozenset[int] = frozenset()
        self._throttle = throttle

    def __repr__(self) -> str:
        return f"<UpstreamFetch {redact_url(self._url)}>"

    async def run(self, blob: StoredBlob | None, elsewhere: frozenset[int] = frozenset()) -> StoredBlob:
        """Fetch until every piece is in; ``blob`` is what the store already holds.

        ``elsewhere``: pieces held by others (peers, after a takeover from another
        replica) that must not be read again; the whole digest cannot be checked here
        then, and is left to the peers (each checks it before completing a blob)."""
        self._blob = blob
        self._elsewhere = elsewhere
        attempt = 1
        while True:
            try:
                return await self._read_once()
            except UpstreamError as exc:
                if exc.definitive or attempt >= self._config.attempts:
                    raise
                delay = self._config.retry_delay * 2 ** (attempt - 1)
                log.warning("origin: %s (attempt %d, retrying in %.1fs)", exc, attempt, delay)
            attempt += 1
            await asyncio.sleep(delay)

    async def _read_once(self) -> StoredBlob:
        blob = self._blob
        start_piece = first_missing(blob, self._elsewhere) if blob is not None else 0
        offset = start_piece * blob.meta.piece_size if blob is not None else 0
        headers = {PEER_HEADER: "swarmpull", **self._headers()}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        where = redact_url(self._url)
        throttle = self._throttle
        try:
            async with (
                throttle.connection() if throttle else nullcontext(),
                self._session.get(self._url, headers=headers, timeout=self._timeout) as resp,
            ):
                size, skip = self._check_response(resp, offset, where)
                if blob is None:
                    blob = self._events.geometry(size)
                elif blob.meta.size != size:
                    raise UpstreamError(
                        f"upstream size of {where} changed from {blob.meta.size} to {size}",
                        definitive=True,
                    )
                self._blob = blob
                await self._stream(resp, blob, start_piece, skip, where)
                return blob
        except TimeoutError:
            raise UpstreamError(f"upstream {where} stalled for {self._config.stall_timeout}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(f"upstream {where} unreachable: {exc or type(exc).__name__}") from None

    def _check_response(self, resp: aiohttp.ClientResponse, offset: int, where: str) -> tuple[int, int]:
        """``(blob size, bytes to skip)``, or UpstreamError for an answer we cannot use."""
        if resp.status >= 400:
            retryable = resp.status >= 500 or resp.status in (408, 429)
            raise UpstreamError(
                f"upstream answered {resp.status} {resp.reason or ''} for {where}".replace("  ", " "),
                status=resp.status,
                definitive=not retryable,
            )
        if resp.status == 206:
            match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                raise UpstreamError(f"upstream {where} sent an unexpected Content-Range")
            return int(match.group(3)), 0
        if resp.status != 200:
            raise UpstreamError(f"upstream answered {resp.status} for {where}", status=resp.status)
        if resp.content_length is None:
            raise UpstreamError(f"upstream {where} sent no Content-Length", definitive=True)
        return resp.content_length, offset  # a 200 to a Range request: skip what we hold

    async def _stream(
        self,
        resp: aiohttp.ClientResponse,
        blob: StoredBlob,
        start_piece: int,
        skip: int,
        where: str,
    ) -> None:
        geometry = blob.geometry
        whole = None if self._elsewhere else hashlib.sha256()
        for piece in range(start_piece if whole is not None else 0):  # a resumed read: rehash what we hold
            whole.update(blob.read(geometry.offset(piece), geometry.length(piece)))
        pos = start_piece * geometry.piece_size
        writer: PieceWriter | None = None
        async for chunk in resp.content.iter_chunked(CHUNK):
            if self._throttle is not None:
                await self._throttle.acquire(len(chunk))
            if self._on_bytes is not None:
                self._on_bytes(len(chunk))
            view = memoryview(chunk)
            if skip:
                dropped = min(skip, len(view))
                view, skip = view[dropped:], skip - dropped
            while view:
                piece = pos // geometry.piece_size
                if piece >= geometry.count:
                    raise UpstreamError(f"upstream {where} sent more than {geometry.size} bytes")
                end = geometry.offset(piece) + geometry.length(piece)
                part, view = view[: end - pos], view[end - pos :]
                if whole is not None:
                    whole.update(part)
                if not blob.is_verified(piece) and piece not in self._elsewhere:
                    if writer is None:
                        writer = blob.writer(piece)
                    writer.write(part)
                pos += len(part)
                if pos == end:
                    self._piece_done(blob, piece, writer, whole, where)
                    writer = None
        if writer is not None:
            writer.abort()
        if pos < geometry.size:
            raise UpstreamError(f"upstream {where} closed after {pos} of {geometry.size} bytes")
        if geometry.count == 0 and whole is not None:
            self._events.digest(self._check_digest(whole, where))

    def _piece_done(
        self,
        blob: StoredBlob,
        piece: int,
        writer: PieceWriter | None,
        whole: hashlib._Hash | None,
        where: str,
    ) -> None:
        last = piece == blob.geometry.count - 1 and whole is not None
        if writer is None:  # already held from an earlier read
            if last:
                self._events.digest(self._check_digest(whole, where))
            return
        sha = writer.commit(None, record=not (last or self._defer))
        if last:
            self._events.digest(self._check_digest(whole, where))
            if not self._defer:
                blob.record(piece, sha)
        self._events.piece(piece, sha)

    def _check_digest(self, whole: hashlib._Hash, where: str) -> Digest:
        digest = Digest(whole.hexdigest())
        if self._expected is not None and digest != self._expected:
            raise UpstreamError(
                f"upstream {where} sent content with digest {digest}, expected {self._expected}",
                definitive=True,
            )
        return digest


def first_missing(blob: StoredBlob, elsewhere: frozenset[int] = frozenset()) -> int:
    for piece in range(blob.geometry.count):
        if not blob.is_verified(piece) and piece not in elsewhere:
            return piece
    return blob.geometry.count
