"""Reading a blob from its upstream (back to source) into the store, piece by piece.

The supernode's seed uses it (once per task), and so does a peer that has to fetch
directly because no supernode answers. ``UpstreamFetch`` streams the upstream body in
order and writes each piece into the store; once a piece is complete it is hashed from
what was written (off the event loop), together with the whole blob's digest, and
reported, so peers start long before the blob is done. A broken read resumes with a
``Range`` request at the first missing piece. When a digest is expected, the last piece
is reported only after the whole digest matched, so nobody can complete a blob that is
wrong. The fetch records nothing itself: the caller records each reported piece (the
seed at once, signed; a direct read once the whole digest matched).

Each attempt asks ``source(broken)`` for a URL and the headers that go with it, naming
the URLs whose answers broke off in this fetch (the supernode keeps every requester's URL
and credentials together and may switch requester between attempts, never mix them).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urljoin, urlsplit

import aiohttp

from swarmpull.core.digest import Digest
from swarmpull.core.tasks import redact_url
from swarmpull.edges.http import PEER_HEADER
from swarmpull.edges.store import PieceWriter, StoredBlob
from swarmpull.edges.upstream_guard import UpstreamRefused

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
MAX_REDIRECTS = 5
REDIRECTS = (301, 302, 303, 307, 308)
# What a redirect to another origin keeps of a request's headers: none that may be a credential.
CROSS_ORIGIN_HEADERS = frozenset({"accept", "accept-encoding", "range", "user-agent", PEER_HEADER.lower()})
CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)\Z")


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
    max_blob_size: int = 64 << 30
    """A blob an upstream says is larger than this is refused."""

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("UpstreamConfig.attempts must be at least 1")


class UpstreamError(Exception):
    """The upstream could not give the blob. ``definitive`` errors are not retried;
    ``bad_data``: the upstream sent bytes that do not match the digest."""

    def __init__(
        self,
        message: str,
        status: int | None = None,
        definitive: bool = False,
        bad_data: bool = False,
        challenge: str | None = None,
        refused: bool = False,
    ):
        super().__init__(message)
        self.status = status
        self.definitive = definitive
        self.bad_data = bad_data
        self.challenge = challenge  # the upstream's WWW-Authenticate on a 401
        self.refused = refused  # not read at all: ``--upstream-allow`` does not allow it


class Throttle(Protocol):
    """Caps on one upstream: a connection slot per read, and bandwidth chunk by chunk."""

    def connection(self) -> AbstractAsyncContextManager[None]: ...

    async def acquire(self, count: int) -> None: ...


class UpstreamEvents(Protocol):
    """What the fetch reports, on the loop that runs it."""

    def geometry(self, size: int) -> StoredBlob:
        """The blob's size is known: create (and return) its place in the store."""

    def digest(self, digest: Digest) -> None:
        """The whole blob's digest, known before its last piece is reported."""

    def piece(self, index: int, sha: str) -> None:
        """Piece ``index`` is written and hashes to ``sha`` (not recorded yet)."""


Source = Callable[[frozenset[str]], tuple[str, dict[str, str]]]
"""``broken`` -> ``(url, headers)`` for the next attempt; ``broken``: the URLs whose
answers failed earlier in this fetch."""
Authorize = Callable[[str, str], Awaitable[str | None]]
"""``(url, challenge)`` -> an ``Authorization`` for a read that carried none (an anonymous
registry token), or None."""


class UpstreamFetch:
    """Reads one blob into the store from the URL ``source()`` names at each attempt."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        source: Source,
        expected: Digest | None,
        events: UpstreamEvents,
        config: UpstreamConfig,
        on_bytes: Callable[[int], None] | None = None,
        throttle: Throttle | None = None,
        authorize: Authorize | None = None,
    ) -> None:
        self._session = session
        self._source = source
        self._expected = expected
        self._events = events
        self._config = config
        self._on_bytes = on_bytes
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=config.connect_timeout, sock_read=config.stall_timeout
        )
        self._blob: StoredBlob | None = None
        self._elsewhere: frozenset[int] = frozenset()
        self._throttle = throttle
        self._authorize = authorize
        self._anonymous: str | None = None  # what ``authorize`` gave, for reads without credentials
        self.url = ""  # the URL of the current (or last) attempt, and its headers
        self._extra: dict[str, str] = {}
        # The URLs whose answers wrote pieces of this blob, in order, and whether the blob
        # held pieces before this fetch began (read by someone else). A digest mismatch can
        # only be pinned on a URL that wrote every piece (``sole_writer``).
        self.writers: list[str] = []
        self.inherited = False
        self._broken: set[str] = set()  # URLs whose answer failed in this fetch

    def __repr__(self) -> str:
        return f"<UpstreamFetch {redact_url(self.url)}>"

    @property
    def sole_writer(self) -> str | None:
        """The one URL that wrote every byte of the blob, if one did: the URL to blame when
        the whole digest does not match. None when a resumed read mixed URLs, or pieces came
        from before this fetch: then nobody can tell which answer lied."""
        if self.inherited or len(self.writers) != 1:
            return None
        return self.writers[0]

    async def run(self, blob: StoredBlob | None, elsewhere: frozenset[int] = frozenset()) -> StoredBlob:
        """Fetch until every piece is in; ``blob`` is what the store already holds.

        ``elsewhere``: pieces held by others (peers, after a takeover from another
        replica) that must not be read again; the whole digest cannot be checked here
        then, and is left to the peers (each checks it before completing a blob)."""
        self._blob = blob
        self._elsewhere = elsewhere
        self.inherited = bool(elsewhere) or (blob is not None and blob.verified_count > 0)
        attempt = 1
        while True:
            try:
                return await self._read_once()
            except UpstreamError as exc:
                if await self._authorized(exc):
                    continue  # challenged for a token anyone may have: asked again with it
                self._broken.add(self.url)
                if exc.definitive or attempt >= self._config.attempts:
                    raise
                delay = self._config.retry_delay * 2 ** (attempt - 1)
                log.warning("origin: %s (attempt %d, retrying in %.1fs)", exc, attempt, delay)
            attempt += 1
            await asyncio.sleep(delay)

    async def _authorized(self, exc: UpstreamError) -> bool:
        """A read without credentials was challenged: take the token ``authorize`` gives."""
        if exc.status != 401 or not exc.challenge or self._authorize is None or self._anonymous is not None:
            return False
        if "Authorization" in self._extra:
            return False  # the requester's own credentials: never replaced
        self._anonymous = await self._authorize(self.url, exc.challenge)
        return self._anonymous is not None

    async def _read_once(self) -> StoredBlob:
        blob = self._blob
        start_piece = first_missing(blob, self._elsewhere) if blob is not None else 0
        offset = start_piece * blob.meta.piece_size if blob is not None else 0
        url, extra = self._source(frozenset(self._broken))
        self.url, self._extra = url, extra
        if start_piece == 0 and not self.inherited:
            self.writers.clear()  # every piece is written (again) by this answer
        headers = {PEER_HEADER: "swarmpull", **extra}
        if self._anonymous is not None and "Authorization" not in extra:
            headers["Authorization"] = self._anonymous
        if offset:
            headers["Range"] = f"bytes={offset}-"
        where = redact_url(url)
        throttle = self._throttle
        try:
            async with (
                throttle.connection() if throttle else nullcontext(),
                follow(self._session, url, headers, self._timeout) as resp,
            ):
                size, skip = self._check_response(resp, offset, where)
                if size > self._config.max_blob_size:
                    raise UpstreamError(
                        f"upstream {where} declares {size} bytes, "
                        f"over the limit of {self._config.max_blob_size}",
                        definitive=True,
                    )
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
        except UpstreamRefused as exc:  # the same answer every time: not retried
            raise UpstreamError(str(exc), definitive=True, refused=True) from None
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
                challenge=resp.headers.get("WWW-Authenticate") if resp.status == 401 else None,
            )
        if resp.status == 206:
            match = CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
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
        """Write the body into the store as it comes. Each complete piece is hashed by a
        worker thread of its own (in order, so the whole-blob digest is fed in order)
        while the loop keeps reading: a break in the connection loses little that was
        already received, and the hashing never stalls the event loop."""
        geometry = blob.geometry
        whole = None if self._elsewhere else hashlib.sha256()
        hashing = _Hashing(whole)
        writer: PieceWriter | None = None
        try:
            if whole is not None and start_piece:  # a resumed read: the digest covers what we hold
                hashing.add(start_piece - 1, None, 0, start_piece * geometry.piece_size, blob.fd)
            pos = start_piece * geometry.piece_size
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
                    if not blob.is_verified(piece) and piece not in self._elsewhere:
                        if writer is None:
                            writer = blob.writer(piece)
                            if self.url not in self.writers:
                                self.writers.append(self.url)
                        writer.write(part)
                    pos += len(part)
                    if pos == end:
                        offset, length = geometry.offset(piece), geometry.length(piece)
                        hashing.add(piece, writer, offset, length, blob.fd)
                        writer = None
                self._report(blob, hashing.ready(), whole, where)
            if pos < geometry.size:
                raise UpstreamError(f"upstream {where} closed after {pos} of {geometry.size} bytes")
        finally:  # what was received in full is reported, even when the read broke
            if writer is not None:  # a piece cut short: its region is free for the next read
                writer.abort()
            self._report(blob, await hashing.drain(), whole, where)
        if geometry.count == 0 and whole is not None:
            self._events.digest(self._check_digest(whole, where))

    def _report(
        self, blob: StoredBlob, done: list[tuple[int, str | None]], whole: hashlib._Hash | None, where: str
    ) -> None:
        for piece, sha in done:
            if piece == blob.geometry.count - 1 and whole is not None:
                self._events.digest(self._check_digest(whole, where))
            if sha is not None:
                self._events.piece(piece, sha)

    def _check_digest(self, whole: hashlib._Hash, where: str) -> Digest:
        digest = Digest(whole.hexdigest())
        if self._expected is not None and digest != self._expected:
            raise UpstreamError(
                f"upstream {where} sent content with digest {digest}, expected {self._expected}",
                definitive=True,
                bad_data=True,
            )
        return digest


class _Hashing:
    """Pieces hashed one after the other by a worker thread of their own, in the order
    they came (the whole-blob digest is fed in order)."""

    def __init__(self, whole: hashlib._Hash | None) -> None:
        self._whole = whole
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="origin-hash")
        self._pending: deque[tuple[int, asyncio.Future[str | None]]] = deque()

    def add(self, piece: int, writer: PieceWriter | None, offset: int, length: int, fd: int) -> None:
        """Hash a written piece (``writer``), or feed a held one to the whole digest."""
        job = self._pool.submit(_hash_job, writer, self._whole, fd, offset, length)
        self._pending.append((piece, asyncio.wrap_future(job)))

    def ready(self) -> list[tuple[int, str | None]]:
        """The pieces hashed so far, in order (raises what a hash raised)."""
        out = []
        while self._pending and self._pending[0][1].done():
            piece, future = self._pending.popleft()
            out.append((piece, future.result()))
        return out

    async def drain(self) -> list[tuple[int, str | None]]:
        try:
            if self._pending:
                await asyncio.wait([f for _, f in self._pending])
            return self.ready()
        finally:
            self._pool.shutdown(wait=False)


def _hash_job(
    writer: PieceWriter | None, whole: hashlib._Hash | None, fd: int, offset: int, length: int
) -> str | None:
    if writer is None:  # held already: only the whole digest wants its bytes
        if whole is not None:
            _update_from_file(whole, fd, offset, length)
        return None
    try:
        return writer.digest(whole)
    finally:
        writer.abort()  # nothing is recorded here: the caller records what we report


def _update_from_file(digest: hashlib._Hash, fd: int, offset: int, length: int) -> None:
    end = offset + length
    while offset < end:
        chunk = os.pread(fd, min(1 << 20, end - offset), offset)
        if not chunk:
            return
        digest.update(chunk)
        offset += len(chunk)


@contextlib.asynccontextmanager
async def follow(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], timeout: aiohttp.ClientTimeout
) -> AsyncIterator[aiohttp.ClientResponse]:
    """GET ``url``, following redirects here rather than in aiohttp: each hop is a new
    connection (which the session's connector checks against ``--upstream-allow`` on the
    supernode), only to http(s), at most ``MAX_REDIRECTS``; UpstreamError otherwise. The
    client's headers go no further than the origin they were given for: to another one
    (a registry's redirect to a storage service carries its own signature in the URL)
    only ``CROSS_ORIGIN_HEADERS`` follow, since any other may be a credential (an
    ``X-Api-Key`` as much as a ``Cookie``)."""
    for _ in range(MAX_REDIRECTS + 1):
        resp = await session.get(url, headers=headers, timeout=timeout, allow_redirects=False)
        location = resp.headers.get("Location") if resp.status in REDIRECTS else None
        if location is None:
            try:
                yield resp
            finally:
                resp.release()
            return
        resp.release()
        hop = urljoin(url, location)
        if urlsplit(hop).scheme not in ("http", "https"):
            raise UpstreamError(f"upstream {redact_url(url)} redirected to a non-HTTP URL", definitive=True)
        if _origin(hop) != _origin(url):
            headers = {k: v for k, v in headers.items() if k.lower() in CROSS_ORIGIN_HEADERS}
        url = hop
    raise UpstreamError(f"upstream {redact_url(url)}: more than {MAX_REDIRECTS} redirects", definitive=True)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


def first_missing(blob: StoredBlob, elsewhere: frozenset[int] = frozenset()) -> int:
    for piece in range(blob.geometry.count):
        if not blob.is_verified(piece) and piece not in elsewhere:
            return piece
    return blob.geometry.count
