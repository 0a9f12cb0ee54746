"""The load test's upstream registry: the OCI distribution *pull* API served from memory,
counting every byte it sends and, optionally, shaping all its egress to one rate.

"The registry sent each layer once" is then a number (``blob_gets``, ``blob_bytes_sent``)
and egress over time is a series (``egress``) a report can draw. No push: images are
``add()``ed in process. Manifests are served whatever the ``Accept`` header says.
"""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web

from loadtest.image import Blob, Image
from swarmpull.core.clock import Clock, SystemClock
from swarmpull.edges.http import HostPort, start_site
from swarmpull.edges.ratelimit import RateLimiter

CHUNK = 64 * 1024  # bytes acquired from the limiter, then written, at a time
SAMPLE_INTERVAL = 0.05  # seconds between two ``egress`` samples, at least
API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}

# The distribution spec's repository name grammar.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
_TAG = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(slots=True)
class _Repository:
    tags: dict[str, str] = field(default_factory=dict)  # tag -> manifest digest
    manifests: dict[str, Blob] = field(default_factory=dict)
    blobs: dict[str, Blob] = field(default_factory=dict)


class MiniRegistry:
    """Construct, ``add()`` images, ``await start()``; read the counters; ``await stop()``."""

    def __init__(
        self, listen: HostPort | None = None, rate: float | None = None, clock: Clock | None = None
    ) -> None:
        self._listen = listen or HostPort("127.0.0.1", 0)
        self.clock = clock or SystemClock()
        self.rate = rate  # bytes per second shared by all responses; None: unshaped
        self._limiter = RateLimiter(rate, self.clock)
        self._repositories: dict[str, _Repository] = {}
        self._runner: web.AppRunner | None = None
        self._bound: HostPort | None = None
        self.fail_blobs: set[str] = set()  # digests answered with 500 (fault injection)
        self.corrupt_blobs: set[str] = set()  # digests answered with one byte flipped
        self.fail_manifests: int | None = None  # a status every manifest request gets (outage)
        self.manifest_get_quota: int | None = None  # manifest GETs served before 429s (Docker Hub)
        self.token: str | None = None  # when set, every request needs "Bearer <token>"
        self.login: tuple[str, str] | None = None  # when set, the token realm needs it
        self.bytes_sent = 0  # every body byte written, errors included
        self.blob_bytes_sent = 0
        self.blob_gets: Counter[str] = Counter()  # digest -> GETs that sent a body
        self.requests: Counter[str] = Counter()  # "GET manifests", "HEAD blobs", ...
        self.egress: list[tuple[float, int]] = []  # (time on self.clock, blob_bytes_sent so far)

    def __repr__(self) -> str:
        where = self._bound or "stopped"
        return f"<MiniRegistry {where} repositories={len(self._repositories)} sent={self.bytes_sent}>"

    def add(self, repository: str, tag: str, image: Image) -> None:
        """Serve ``image`` as ``repository:tag`` (and by its manifest digest)."""
        self.add_index(repository, tag, image.manifest, [image])

    def add_index(self, repository: str, tag: str, top: Blob, images: list[Image]) -> None:
        """Serve manifest ``top`` (an index of ``images``, or one image's manifest) as
        ``repository:tag``, and every manifest and blob of ``images``."""
        if not _NAME.match(repository):
            raise ValueError(f"invalid repository name {repository!r}")
        if not _TAG.match(tag):
            raise ValueError(f"invalid tag {tag!r}")
        repo = self._repositories.setdefault(repository, _Repository())
        repo.tags[tag] = top.digest
        repo.manifests[top.digest] = top
        for image in images:
            repo.manifests[image.manifest_digest] = image.manifest
            repo.blobs.update(image.blobs())

    @property
    def address(self) -> HostPort:
        if self._bound is None:
            raise RuntimeError("the registry is not started")
        return self._bound

    @property
    def url(self) -> str:
        return self.address.url()

    @property
    def host(self) -> str:
        """``HOST:PORT``, as image references name a registry."""
        return str(self.address)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/v2/{tail:.*}", self._handle)
        app.router.add_route("GET", "/token", self._token)
        # Header fields as long as docker-registry takes (it reads up to 1 MiB of header).
        self._runner, self._bound = await start_site(app, self._listen, max_field_size=64 * 1024)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _token(self, request: web.Request) -> web.Response:
        """The bearer-token realm: a token for anyone, or for ``login`` only."""
        self.requests["GET token"] += 1
        if self.login is not None:
            expected = "Basic " + base64.b64encode(":".join(self.login).encode()).decode()
            if request.headers.get("Authorization") != expected:
                return web.json_response({"errors": [{"code": "UNAUTHORIZED"}]}, status=401)
        return web.json_response({"token": self.token, "expires_in": 300})

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        kind, name, reference = _parse(request.match_info["tail"])
        self.requests[f"{request.method} {kind}"] += 1
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            challenge = f'Bearer realm="{self.url}/token",service="mini",scope="repository:{name}:pull"'
            return await self._error(
                request, 401, "UNAUTHORIZED", "authentication required", {"WWW-Authenticate": challenge}
            )
        if request.method not in ("GET", "HEAD"):
            return await self._error(request, 405, "UNSUPPORTED", f"{request.method} is not supported")
        if kind == "base":
            return await self._send(request, 200, {"Content-Type": "application/json"}, b"{}")
        if kind == "unknown":
            return await self._error(request, 404, "UNSUPPORTED", f"no such endpoint: {request.path}")
        repo = self._repositories.get(name)
        if repo is None:
            return await self._error(request, 404, "NAME_UNKNOWN", f"repository {name} is not known")
        if kind == "manifests":
            return await self._manifest(request, repo, reference)
        return await self._blob(request, repo, reference)

    async def _manifest(self, request: web.Request, repo: _Repository, reference: str) -> web.StreamResponse:
        if self.fail_manifests is not None:
            return await self._error(request, self.fail_manifests, "UNAVAILABLE", "injected failure")
        if request.method == "GET" and self.manifest_get_quota is not None:
            if self.manifest_get_quota <= 0:
                return await self._error(
                    request, 429, "TOOMANYREQUESTS", "pull rate limit reached", {"Retry-After": "1"}
                )
            self.manifest_get_quota -= 1
        digest = reference if _DIGEST.match(reference) else repo.tags.get(reference)
        manifest = repo.manifests.get(digest) if digest else None
        if manifest is None:
            return await self._error(request, 404, "MANIFEST_UNKNOWN", f"manifest {reference} is not known")
        headers = {"Content-Type": manifest.media_type, "Docker-Content-Digest": manifest.digest}
        return await self._send(request, 200, headers, manifest.data)

    async def _blob(self, request: web.Request, repo: _Repository, digest: str) -> web.StreamResponse:
        if digest in self.fail_blobs:
            return await self._error(request, 500, "UNKNOWN", "injected failure")
        blob = repo.blobs.get(digest)
        if blob is None:
            return await self._error(request, 404, "BLOB_UNKNOWN", f"blob {digest} is not known")
        headers = {
            "Content-Type": "application/octet-stream",
            "Docker-Content-Digest": blob.digest,
            "Accept-Ranges": "bytes",
        }
        body = memoryview(blob.data)
        if digest in self.corrupt_blobs:
            flipped = bytearray(blob.data)
            flipped[len(flipped) // 2] ^= 0xFF
            body = memoryview(bytes(flipped))
        status = 200
        wanted = _byte_range(request.headers.get("Range"), blob.size)
        if wanted == "unsatisfiable":
            headers["Content-Range"] = f"bytes */{blob.size}"
            return await self._error(request, 416, "UNSUPPORTED", "requested range not satisfiable", headers)
        if wanted is not None:
            start, end = wanted
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{blob.size}"
            body, status = body[start:end], 206
        resp = await self._send(request, status, headers, body, blob=True)
        if request.method == "GET":
            self.blob_gets[blob.digest] += 1
        return resp

    async def _error(
        self,
        request: web.Request,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> web.StreamResponse:
        """An OCI error body: ``{"errors": [{"code", "message", "detail"}]}``."""
        body = _error_body(code, message)
        return await self._send(
            request, status, {**(headers or {}), "Content-Type": "application/json"}, body
        )

    async def _send(
        self,
        request: web.Request,
        status: int,
        headers: dict[str, str],
        body: bytes | memoryview,
        blob: bool = False,
        cut: int | None = None,
    ) -> web.StreamResponse:
        """Write ``body`` (none for HEAD) chunk by chunk through the limiter, counting it;
        with ``cut``, only that many bytes, then the connection is reset (fault injection)."""
        resp = web.StreamResponse(status=status, headers={**API_VERSION, **headers})
        resp.content_length = len(body)
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        view = memoryview(body)[:cut]
        for pos in range(0, len(view), CHUNK):
            chunk = view[pos : pos + CHUNK]
            await self._limiter.acquire(len(chunk))
            await resp.write(chunk)
            self.bytes_sent += len(chunk)
            if blob:
                self.blob_bytes_sent += len(chunk)
            self._sample()
        if cut is not None and request.transport is not None:
            request.transport.abort()
            return resp
        await resp.write_eof()
        return resp

    def _sample(self) -> None:
        now = self.clock.monotonic()
        if not self.egress or now - self.egress[-1][0] >= SAMPLE_INTERVAL:
            self.egress.append((now, self.blob_bytes_sent))

    def egress_since(self, start: float) -> list[tuple[float, int]]:
        """Blob egress over time: (seconds since ``start``, bytes sent so far), from a
        second before ``start`` to now. ``start`` is a time on ``self.clock``: the
        samples' own clock, so the series cannot be shifted by a wall-clock step."""
        points = [(t - start, sent) for t, sent in self.egress if t >= start - 1.0]
        points.append((self.clock.monotonic() - start, self.blob_bytes_sent))
        return points


def _parse(tail: str) -> tuple[str, str, str]:
    """``(kind, name, reference)`` of a path below ``/v2/``; kind is "base" (``/v2/``
    itself), "manifests", "blobs" or "unknown". Names may hold slashes: the last
    ``/manifests/`` or ``/blobs/`` splits name and reference."""
    if not tail:
        return "base", "", ""
    split = max(tail.rfind("/manifests/"), tail.rfind("/blobs/"))
    if split > 0:
        name, rest = tail[:split], tail[split + 1 :]
        kind, _, reference = rest.partition("/")
        if _NAME.match(name) and reference and "/" not in reference:
            return kind, name, reference
    return "unknown", "", ""


def _byte_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """The ``[start, end)`` a ``Range`` header asks for; None to send everything (no header,
    or one we do not handle, which RFC 9110 allows to ignore); "unsatisfiable"."""
    match = _RANGE.match(header or "")
    if not match or match.group(1) == match.group(2) == "":
        return None
    first, last = match.group(1), match.group(2)
    if first == "":  # bytes=-N: the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - suffix), size
    start = int(first)
    if last and int(last) < start:
        return None  # an invalid range: ignored, as RFC 9110 allows
    if start >= size:
        return "unsatisfiable"
    return start, min(int(last) + 1, size) if last else size


def _error_body(code: str, message: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()
