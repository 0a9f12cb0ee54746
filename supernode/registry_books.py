"""What the supernode knows of upstream registries, and when it must ask again: sans-IO.

Every method takes ``now``; nothing here waits, reads a clock or touches the network
(``registry_mirror`` is the shell that does). Five books:

- **resolutions**: ``(host, repository, tag, accept)`` -> the manifest a tag named and
  when. Fresh for ``tag_ttl``: the registry is asked once per tag per TTL for the whole
  cluster. While the registry is unavailable an older one still answers, up to
  ``tag_stale``.
- **rights**: ``(host, repository, credential key)`` -> when the registry last let that
  credential pull there. Fresh for ``auth_ttl``; while the registry is unavailable, the
  last answer stands (an image the cluster holds still pulls by digest, always). An
  answer for one credential never stands for another, except that what anonymous may
  pull (a public repository) anyone may.
- **contents**: ``(host, repository, digest)`` -> its descriptor, for what the registry
  showed to be in that repository: a resolved tag's manifest, a HEAD's answer, and what
  a verified manifest of the repository references. Content is served only for the
  repository it was seen in: rights on one repository never open another's content.
- **manifests**: digest -> verified bytes, least recently used dropped beyond a budget.
- **outages**: host -> until when nobody asks it (after it was unreachable or answered
  429 or 5xx: its ``Retry-After``, else ``tag_ttl``), so that 1000 nodes arriving
  during an outage do not knock 1000 times.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

from swarmpull.core.digest import Digest
from swarmpull.core.oci import Descriptor, ParsedManifest

K = TypeVar("K")
V = TypeVar("V")

MAX_ENTRIES = 100_000  # per book: hostile nodes can invent tags and credentials
MAX_OUTAGE = 300.0  # seconds: a Retry-After longer than this is not honoured in full
ANONYMOUS_KEY = "anonymous"


@dataclass(frozen=True, slots=True)
class BooksConfig:
    tag_ttl: float = 5.0
    tag_stale: float = 3600.0
    auth_ttl: float = 60.0
    manifest_bytes: int = 64 << 20


@dataclass(frozen=True, slots=True)
class Resolution:
    descriptor: Descriptor
    at: float


# What one manifest makes known to be in its repository, at most: an image has tens of
# layers, an index tens of platforms; a hostile registry's index of 44,000 entries pushed
# every other registry's contents out of the shared memory (attack round 10).
MAX_CHILDREN = 1024


class _Lru(Generic[K, V]):
    """A dict that forgets its least recently used entries beyond ``limit``."""

    def __init__(self, limit: int = MAX_ENTRIES) -> None:
        self._items: OrderedDict[K, V] = OrderedDict()
        self._limit = limit

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._limit:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class RegistryBooks:
    def __init__(self, config: BooksConfig) -> None:
        self.config = config
        self._resolutions: _Lru[tuple[str, str, str, str], Resolution] = _Lru()
        self._rights: _Lru[tuple[str, str, str], float] = _Lru()
        self._contents: _Lru[tuple[str, str, Digest], Descriptor] = _Lru(10 * MAX_ENTRIES)
        self._manifests: OrderedDict[Digest, bytes] = OrderedDict()
        self._manifest_bytes = 0
        self._outages: dict[str, float] = {}

    # ------------------------------------------------------------------ rights

    def rights_fresh(self, host: str, repository: str, credential: str, now: float) -> bool:
        """``credential`` (or anonymous: a public repository) was let in within
        ``auth_ttl``: it may pull without the registry being asked."""
        for key in (credential, ANONYMOUS_KEY):
            at = self._rights.get((host, repository, key))
            if at is not None and now - at < self.config.auth_ttl:
                return True
        return False

    def rights_stand_in(self, host: str, repository: str, credential: str) -> bool:
        """While the registry is unavailable: the credential (or anonymous) was let in, ever."""
        return any(
            self._rights.get((host, repository, key)) is not None for key in (credential, ANONYMOUS_KEY)
        )

    def allowed(self, host: str, repository: str, credential: str, now: float) -> None:
        """The registry let ``credential`` pull from the repository."""
        self._rights.put((host, repository, credential), now)

    # ------------------------------------------------------------- resolutions

    def resolution(self, key: tuple[str, str, str, str], now: float) -> Resolution | None:
        """The fresh resolution of a tag (within ``tag_ttl``), if any."""
        found = self._resolutions.get(key)
        return found if found is not None and now - found.at < self.config.tag_ttl else None

    def stale_resolution(self, key: tuple[str, str, str, str], now: float) -> Resolution | None:
        """The last resolution, if within ``tag_stale``: for when the registry cannot answer."""
        found = self._resolutions.get(key)
        return found if found is not None and now - found.at < self.config.tag_stale else None

    def resolved(self, key: tuple[str, str, str, str], descriptor: Descriptor, now: float) -> None:
        self._resolutions.put(key, Resolution(descriptor, now))
        self.seen(key[0], key[1], descriptor)

    # ---------------------------------------------------------------- contents

    def seen(self, host: str, repository: str, descriptor: Descriptor) -> None:
        """The registry showed ``descriptor`` to be in the repository."""
        self._contents.put((host, repository, descriptor.digest), descriptor)

    def content(self, host: str, repository: str, digest: Digest) -> Descriptor | None:
        return self._contents.get((host, repository, digest))

    def manifest(self, host: str, repository: str, digest: Digest) -> bytes | None:
        """A verified manifest, if it is known to be in the repository."""
        if self.content(host, repository, digest) is None:
            return None
        data = self._manifests.get(digest)
        if data is not None:
            self._manifests.move_to_end(digest)
        return data

    def add_manifest(
        self, host: str, repository: str, descriptor: Descriptor, data: bytes, parsed: ParsedManifest | None
    ) -> None:
        """A manifest of the repository, verified against ``descriptor``: kept, and what it
        references known to be in the repository too (the registry only accepts a
        manifest whose references are there)."""
        self.seen(host, repository, descriptor)
        children = (*parsed.manifests, *parsed.blobs) if parsed is not None else ()
        for child in children[:MAX_CHILDREN]:  # the rest are asked of the registry if wanted
            self.seen(host, repository, child)
        if len(data) > self.config.manifest_bytes or descriptor.digest in self._manifests:
            return
        self._manifests[descriptor.digest] = data
        self._manifest_bytes += len(data)
        while self._manifest_bytes > self.config.manifest_bytes:
            _, dropped = self._manifests.popitem(last=False)
            self._manifest_bytes -= len(dropped)

    # ----------------------------------------------------------------- outages

    def out(self, host: str, now: float, retry_after: float | None) -> None:
        """The registry was unreachable or refused to serve (429, 5xx): leave it alone."""
        pause = self.config.tag_ttl if retry_after is None else min(max(retry_after, 0.0), MAX_OUTAGE)
        self._outages[host] = max(self._outages.get(host, 0.0), now + pause)

    def is_out(self, host: str, now: float) -> bool:
        until = self._outages.get(host)
        if until is None:
            return False
        if now >= until:
            del self._outages[host]
            return False
        return True

    def __repr__(self) -> str:
        return (
            f"<RegistryBooks tags={len(self._resolutions)} rights={len(self._rights)} "
            f"manifests={len(self._manifests)} ({self._manifest_bytes} bytes) out={sorted(self._outages)}>"
        )
