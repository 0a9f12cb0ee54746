"""The nodes' registry questions, answered from what the cluster holds: the registry sees
O(layers) requests, not O(nodes), and an image the cluster holds still pulls while the
registry is down or rate-limits.

- A tag is resolved with one HEAD per tag per ``tag_ttl`` for the whole cluster; a
  manifest is fetched by digest once, verified against its digest, and kept; a blob's
  size and media type come from the verified manifests that reference it.
- A node's pull rights on a repository are checked with one HEAD per (credential,
  repository) per ``auth_ttl``, with the node's own credential (the same HEAD resolves
  the tag it asked for). Content is served only to a credential the registry let in, and
  only for the repository it was seen in. What anonymous may pull, anyone may.
- When the registry is unreachable or answers 429 or 5xx, nobody asks it for a while
  (its ``Retry-After``, else ``tag_ttl``) and what the cluster holds stands in: manifests
  by digest always, a tag's last resolution for up to ``tag_stale`` (with a warning), a
  credential's rights as last checked.

Concurrent identical questions share one registry request (``Flights``). The decisions
and the memory are ``RegistryBooks`` (sans-IO); this module waits on the registry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Protocol, TypeVar

from supernode.registry_books import RegistryBooks
from swarmpull.core.clock import Clock
from swarmpull.core.digest import Digest
from swarmpull.core.oci import Descriptor, accept_key
from swarmpull.core.registry_questions import (
    BlobQuestion,
    ManifestAnswer,
    ManifestQuestion,
    NotAnswered,
    RegistryRefused,
)
from swarmpull.edges.registry import Credential, Manifest, RegistryError, Resolved, Upstream

log = logging.getLogger(__name__)

T = TypeVar("T")
_AUTH_ANSWERS = (401, 403)


class Registry(Protocol):
    """What the mirror needs of the registry: ``RegistryAccess``."""

    def upstream(self, host: str | None) -> Upstream: ...

    async def head(
        self, upstream: Upstream, name: str, kind: str, reference: str, credential: Credential
    ) -> Descriptor: ...

    async def resolve(
        self, upstream: Upstream, name: str, tag: str, accept: str, credential: Credential
    ) -> Resolved: ...

    async def manifest(
        self, upstream: Upstream, name: str, digest: Digest, accept: str, credential: Credential
    ) -> Manifest: ...


class _Out(Exception):
    """The registry is unavailable (now, or since a recent failure)."""


class Flights:
    """Concurrent calls with the same key share one run; a caller that gives up does not
    cancel it for the others."""

    def __init__(self) -> None:
        self._running: dict[Hashable, asyncio.Task[Any]] = {}

    async def run(self, key: Hashable, call: Callable[[], Awaitable[T]]) -> T:
        task = self._running.get(key)
        if task is None:
            task = asyncio.ensure_future(call())
            self._running[key] = task
            task.add_done_callback(lambda done: self._landed(key, done))
        return await asyncio.shield(task)

    def _landed(self, key: Hashable, task: asyncio.Task[Any]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have given up

    async def stop(self) -> None:
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class RegistryMirror:
    """``manifest()`` and ``blob()`` answer the nodes; ``stop()`` ends what is under way."""

    def __init__(self, registry: Registry, books: RegistryBooks, clock: Clock) -> None:
        self._registry = registry
        self._books = books
        self._clock = clock
        self._flights = Flights()
        self._warned: dict[tuple[str, ...], float] = {}

    def __repr__(self) -> str:
        return f"<RegistryMirror {self._books!r}>"

    async def stop(self) -> None:
        await self._flights.stop()

    async def manifest(self, question: ManifestQuestion) -> ManifestAnswer:
        """A manifest (by tag or digest) for this node's credential. Raises RegistryRefused
        (the registry said no) or NotAnswered (the node should ask the registry itself)."""
        upstream = self._upstream(question.registry)
        credential = Credential.of(question.authorization)
        name = question.repository
        try:
            digest = question.digest
            if digest is None:
                descriptor, stale = await self._tag(
                    upstream, name, question.reference, question.accept, credential
                )
            else:
                descriptor, stale = await self._content(upstream, name, "manifests", digest, credential)
            if question.head:
                return ManifestAnswer(descriptor, None, stale)
            manifest = await self._manifest(upstream, name, descriptor.digest, question.accept, credential)
            return ManifestAnswer(manifest.descriptor, manifest.data, stale)
        except RegistryError as exc:
            raise RegistryRefused(exc.status, exc.code, str(exc), exc.challenge) from None

    async def blob(self, question: BlobQuestion) -> Descriptor:
        """A blob's descriptor (size, media type) for this node's credential."""
        upstream = self._upstream(question.registry)
        credential = Credential.of(question.authorization)
        try:
            descriptor, _ = await self._content(
                upstream, question.repository, "blobs", question.digest, credential
            )
        except RegistryError as exc:
            raise RegistryRefused(exc.status, exc.code, str(exc), exc.challenge) from None
        return descriptor

    # ------------------------------------------------------------------ steps

    async def _tag(
        self, upstream: Upstream, name: str, tag: str, accept: str, credential: Credential
    ) -> tuple[Descriptor, bool]:
        """The manifest a tag names. One HEAD of the tag both resolves it and, made with
        the node's credential, checks its rights: per credential while its rights are
        unchecked, once per TTL for everyone once they are."""
        books, host, repository = self._books, upstream.host, upstream.repository(name)
        key = (host, repository, tag, accept_key(accept))
        now = self._clock.monotonic()
        checked = books.rights_fresh(host, repository, credential.key, now)
        if checked and (found := books.resolution(key, now)) is not None:
            return found.descriptor, False

        async def head() -> Descriptor:
            resolved = await self._registry.resolve(upstream, name, tag, accept, credential)
            at = self._clock.monotonic()
            books.allowed(host, repository, credential.key, at)
            books.resolved(key, resolved.descriptor, at)
            if resolved.manifest is not None:
                self._keep(upstream, repository, resolved.manifest)
            return resolved.descriptor

        try:
            return await self._shared(host, ("tag", key), ("tag", key, credential.key), checked, head), False
        except _Out as exc:
            stale = books.stale_resolution(key, now)
            if stale is None or not books.rights_stand_in(host, repository, credential.key):
                raise NotAnswered(f"{exc}, and {repository}:{tag} was not resolved before") from None
            age = now - stale.at
            self._warn(
                key, f"{exc}: {repository}:{tag} is {stale.descriptor.digest}, as resolved {age:.0f}s ago"
            )
            return stale.descriptor, True

    async def _content(
        self, upstream: Upstream, name: str, kind: str, digest: Digest, credential: Credential
    ) -> tuple[Descriptor, bool]:
        """A manifest's or blob's descriptor, if the node's credential may pull it: known
        in the repository with the rights checked, or from one HEAD with the credential."""
        books, host, repository = self._books, upstream.host, upstream.repository(name)
        now = self._clock.monotonic()
        known = books.content(host, repository, digest)
        if known is not None and books.rights_fresh(host, repository, credential.key, now):
            return known, False

        async def head() -> Descriptor:
            descriptor = await self._registry.head(upstream, name, kind, str(digest), credential)
            books.allowed(host, repository, credential.key, self._clock.monotonic())
            books.seen(host, repository, known or descriptor)
            return known or descriptor

        try:
            return await self._guarded(
                host, ("head", host, repository, kind, digest, credential.key), head
            ), False
        except _Out as exc:
            if known is None or not books.rights_stand_in(host, repository, credential.key):
                raise NotAnswered(str(exc)) from None
            self._warn(
                (host, repository, credential.key), f"{exc}: pull rights on {repository} as last checked"
            )
            return known, True

    async def _manifest(
        self, upstream: Upstream, name: str, digest: Digest, accept: str, credential: Credential
    ) -> Manifest:
        """The manifest's bytes: kept, or fetched once for everyone (each asker's rights
        were checked before; the bytes are checked against the digest)."""
        books, host, repository = self._books, upstream.host, upstream.repository(name)
        data = books.manifest(host, repository, digest)
        descriptor = books.content(host, repository, digest)
        if data is not None and descriptor is not None:
            return Manifest(descriptor, data)

        async def get() -> Manifest:
            manifest = await self._registry.manifest(upstream, name, digest, accept, credential)
            self._keep(upstream, repository, manifest)
            return manifest

        key = ("get", host, repository, digest)
        try:
            return await self._shared(host, key, (*key, credential.key), True, get)
        except _Out as exc:
            raise NotAnswered(f"{exc}, and the cluster does not hold manifest {digest}") from None

    # -------------------------------------------------------------- internals

    async def _shared(
        self,
        host: str,
        shared_key: Hashable,
        own_key: Hashable,
        share: bool,
        call: Callable[[], Awaitable[T]],
    ) -> T:
        """``call`` in a flight shared by every asker when ``share``. A refusal in a shared
        flight was for whoever asked first: the others ask again with their own credential."""
        if not share:
            return await self._guarded(host, own_key, call)
        try:
            return await self._guarded(host, shared_key, call)
        except RegistryError as exc:
            if exc.status not in _AUTH_ANSWERS:
                raise
        return await self._guarded(host, own_key, call)

    async def _guarded(self, host: str, key: Hashable, call: Callable[[], Awaitable[T]]) -> T:
        """``call`` once for everyone asking under ``key``, unless the registry is out; an
        outage keeps everyone away from it for a while."""
        if self._books.is_out(host, self._clock.monotonic()):
            raise _Out(f"registry {host} is unavailable")
        try:
            return await self._flights.run(key, call)
        except RegistryError as exc:
            if not exc.outage:
                raise
            self._books.out(host, self._clock.monotonic(), exc.retry_after)
            raise _Out(f"registry {host} is unavailable ({exc})") from None

    def _keep(self, upstream: Upstream, repository: str, manifest: Manifest) -> None:
        try:
            parsed = manifest.parsed()
        except RegistryError:
            parsed = None  # served as it is; it names no blob we could vouch for
        self._books.add_manifest(upstream.host, repository, manifest.descriptor, manifest.data, parsed)

    def _upstream(self, host: str) -> Upstream:
        try:
            return self._registry.upstream(host)
        except ValueError as exc:
            raise RegistryRefused(400, "NAME_INVALID", str(exc)) from None

    def _warn(self, key: tuple[str, ...], message: str) -> None:
        """A warning per key at most once per tag TTL: stale answers are worth knowing of,
        not a line per node."""
        now = self._clock.monotonic()
        if now - self._warned.get(key, -1e18) < self._books.config.tag_ttl:
            return
        if len(self._warned) > 10_000:
            self._warned.clear()
        self._warned[key] = now
        log.warning("serving what the cluster holds: %s", message)
