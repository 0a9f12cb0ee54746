"""A pull the way containerd does it, against a mirror (``?ns=``) or a registry directly.

Resolve the tag (``HEAD``), fetch the manifest by digest, then the config and every layer
at once; every blob is hashed and checked against its digest, so a node counts as done
only with a verified image. ``limiter`` shapes the node's download link when it talks to
the registry directly (through the swarm, the peer daemon's own limits do that). An
``Audit`` compares every byte received with the blob the load test served (fault runs).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass, field

import aiohttp

from swarmpull.edges.ratelimit import RateLimiter

ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.index.v1+json",
        "*/*",
    )
)
CHUNK = 256 * 1024


class PullFailed(Exception):
    pass


@dataclass(slots=True)
class Audit:
    """Every byte a runtime receives, held against the blobs the registry serves (the load
    test knows them): the bytes a runtime must never be handed."""

    truth: dict[str, bytes]
    """digest -> the blob's bytes."""
    wrong_bytes: int = 0
    """Bytes received that differ from the blob at their offset (whole chunks are counted),
    whether the stream then completed, failed its digest check or was cut."""
    refused_blobs: int = 0
    """Blobs received whole whose sha256 did not match their digest."""
    refused_bytes: int = 0

    def check(self, digest: str, offset: int, chunk: bytes) -> None:
        blob = self.truth.get(digest)
        if blob is None or blob[offset : offset + len(chunk)] != chunk:
            self.wrong_bytes += len(chunk)

    def refused(self, size: int) -> None:
        self.refused_blobs += 1
        self.refused_bytes += size


@dataclass(frozen=True, slots=True)
class Pulled:
    blobs: int
    bytes: int
    data: dict[str, bytes] = field(default_factory=dict)
    """digest -> the blob's bytes, when asked to keep them (tests)."""


async def pull_image(
    session: aiohttp.ClientSession,
    base: str,
    name: str,
    tag: str,
    ns: str | None = None,
    limiter: RateLimiter | None = None,
    keep: bool = False,
    audit: Audit | None = None,
) -> Pulled:
    """Pull ``name:tag`` from ``base``; raises PullFailed with the reason. With ``keep``
    the blobs' bytes come back too; ``audit`` checks every byte against the truth."""
    params = {"ns": ns} if ns else {}
    try:
        async with session.head(
            f"{base}/v2/{name}/manifests/{tag}", params=params, headers={"Accept": ACCEPT}
        ) as r:
            if r.status != 200:
                raise PullFailed(f"resolving {name}:{tag}: {r.status}")
            digest = r.headers["Docker-Content-Digest"]
        async with session.get(
            f"{base}/v2/{name}/manifests/{digest}", params=params, headers={"Accept": ACCEPT}
        ) as r:
            if r.status != 200:
                raise PullFailed(f"manifest {digest}: {r.status}")
            manifest = await r.read()
        if "sha256:" + hashlib.sha256(manifest).hexdigest() != digest:
            raise PullFailed(f"manifest does not match {digest}")
        document = json.loads(manifest)
        descriptors = [document["config"], *document["layers"]]
        kept: dict[str, bytes] | None = {} if keep else None
        sizes = await asyncio.gather(
            *(_blob(session, base, name, d["digest"], params, limiter, kept, audit) for d in descriptors)
        )
    except (aiohttp.ClientError, TimeoutError, KeyError, ValueError) as exc:
        raise PullFailed(f"{type(exc).__name__}: {exc}") from None
    return Pulled(len(descriptors), sum(sizes), kept or {})


async def pull_until(
    session: aiohttp.ClientSession,
    base: str,
    name: str,
    tag: str,
    deadline: float,
    ns: str | None = None,
    audit: Audit | None = None,
) -> int:
    """Pull until a pull succeeds, as kubelet retries a failed pull (backing off from 1 s
    to 8 s, where kubelet goes from 10 s to 5 min: a load test is short); returns the
    failed attempts. Past ``deadline`` (wall clock), raises the last PullFailed."""
    failures, backoff = 0, 1.0
    while True:
        try:
            await pull_image(session, base, name, tag, ns=ns, audit=audit)
            return failures
        except PullFailed as exc:
            failures += 1
            if time.time() + backoff >= deadline:
                raise PullFailed(f"{exc} (attempt {failures})") from None
        await asyncio.sleep(backoff)
        backoff = min(2 * backoff, 8.0)


async def _blob(
    session: aiohttp.ClientSession,
    base: str,
    name: str,
    digest: str,
    params: dict[str, str],
    limiter: RateLimiter | None,
    kept: dict[str, bytes] | None,
    audit: Audit | None,
) -> int:
    hasher = hashlib.sha256()
    size = 0
    data = bytearray()
    async with session.get(f"{base}/v2/{name}/blobs/{digest}", params=params) as r:
        if r.status != 200:
            raise PullFailed(f"blob {digest}: {r.status}")
        async for chunk in r.content.iter_chunked(CHUNK):
            if limiter is not None:
                await limiter.acquire(len(chunk))
            hasher.update(chunk)
            if audit is not None:
                audit.check(digest, size, chunk)
            size += len(chunk)
            if kept is not None:
                data += chunk
    if "sha256:" + hasher.hexdigest() != digest:
        if audit is not None:
            audit.refused(size)
        raise PullFailed(f"blob {digest} hashes to sha256:{hasher.hexdigest()}")
    if kept is not None:
        kept[digest] = bytes(data)
    return size
