"""Who gets a capability for a task (``swarmpull.core.capability``), and the keys the
seed checks them with.

A task is public when the seed's upstream read succeeded without credentials (no
``Authorization`` or ``Cookie`` header, no user info or query in the URL: a presigned
URL is a credential); that is recorded once per task, from the read that gave the
blob's size (``SeedTask.public``). Every opener of a public task gets a capability.
A private task's opener gets one only when its own URL, asked with its own headers,
answers 2xx (or a redirect, which a registry sends only to a pull it allowed) to a
``HEAD``: proof of pull rights with its own credentials, whatever the credentials of
the first opener were. The answer is cached per (credentials, URL) for
``--auth-cache-ttl`` so a surge asks the upstream once per credential, not per open.
A private task taken over from another replica knows no public read: every opener
proves its rights.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp

from supernode.seed_task import SeedTask, Source
from swarmpull.core.capability import RENEW_BEFORE, issue, issue_many
from swarmpull.core.clock import Clock
from swarmpull.core.signing import Signer, TaskKeys, keys_from_json
from swarmpull.edges.http import PEER_HEADER

log = logging.getLogger(__name__)

CREDENTIAL_HEADERS = ("authorization", "cookie", "proxy-authorization")
MAX_ENTRIES = 10_000


class PullDenied(Exception):
    """The opener could not prove it may pull a private blob."""

    def __init__(self, task_id: str, status: int | None) -> None:
        said = f"answered {status}" if status is not None else "could not be asked"
        super().__init__(
            f"{task_id} is private and the requester's own URL and credentials {said}: "
            "a node gets a private blob only with pull rights of its own"
        )
        self.status = status


def has_credentials(source: Source) -> bool:
    """``source`` carries something that may be a credential."""
    parts = urlsplit(source.url)
    if parts.username is not None or parts.query:
        return True
    return any(name.lower() in CREDENTIAL_HEADERS for name in source.headers)


def _credential_key(source: Source) -> str:
    """A name for the credentials ``source`` carries (not them): the cache's key."""
    lines = sorted(f"{k.lower()}:{v}" for k, v in source.headers.items() if k.lower() in CREDENTIAL_HEADERS)
    return hashlib.sha256("\n".join([source.url, *lines]).encode()).hexdigest()


class SeedTasks(Protocol):
    """The seed's side (``Seeding``): its tasks, and the key each one's pieces are signed with."""

    tasks: dict[str, SeedTask]

    def signer(self, task: SeedTask) -> Signer: ...


class CapabilityDesk:
    """Issues capabilities on open and in report answers; checks pull rights for private
    tasks. ``wall`` is unix time (capabilities expire on it), ``clock`` the cache's."""

    def __init__(
        self,
        seeds: SeedTasks,
        seed_id: str,
        session: aiohttp.ClientSession,
        auth_ttl: float,
        clock: Clock,
        timeout: float = 10.0,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._seeds = seeds
        self._seed_id = seed_id
        self._session = session
        self._ttl = auth_ttl
        self._clock = clock
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._wall = wall
        self._rights: OrderedDict[str, float] = OrderedDict()  # credential key -> when proven
        # The registry mirror's word (host, repository, credential key): that credential
        # was let into the repository within --auth-cache-ttl (a proxy asked about it).
        self.known: Callable[[str, str, str], bool] | None = None

    def __repr__(self) -> str:
        return f"<CapabilityDesk {len(self._rights)} rights cached>"

    async def check(self, task: SeedTask, source: Source) -> None:
        """PullDenied for a private task whose opener's own URL and credentials
        (``source``) do not pass."""
        if task.public is not True:
            await self._check(task.id, source)

    def grant(self, peer_id: str, tasks: list[SeedTask]) -> dict[str, str]:
        """Capabilities for ``peer_id`` on ``tasks`` (each checked), by task id: one
        signature for the tasks that share a key (an image's layers, as a rule)."""
        by_signer: dict[Signer, list[SeedTask]] = {}
        for task in tasks:
            by_signer.setdefault(self._seeds.signer(task), []).append(task)
        out = {}
        for signer, group in by_signer.items():
            issued = issue_many(signer, peer_id, [t.id for t in group], self._wall())
            for task in group:
                capability = issued[task.id]
                task.granted[peer_id] = capability.expires
                out[task.id] = capability.encode()
        return out

    def renew(self, task: SeedTask, peer_id: str) -> str | None:
        """A fresh capability for a member (a report answer) once its latest is due; a
        member this replica never let in (it took the task over) gets one at once."""
        expires = task.granted.get(peer_id)
        if expires is not None and expires - self._wall() >= RENEW_BEFORE:
            return None
        return self._issue(task, peer_id)

    def lets_in(self, task_id: str, peer_id: str) -> bool:
        """The blob is public, or ``peer_id`` holds a capability for it that is live."""
        task = self._seeds.tasks.get(task_id)
        if task is None:
            return False
        expires = task.granted.get(peer_id)
        return task.public is True or (expires is not None and expires >= self._wall())

    def own(self, task_id: str) -> str | None:
        """The supernode's own, for its checks of a source's pieces (not a grant)."""
        task = self._seeds.tasks.get(task_id)
        if task is None:
            return None
        return issue(self._seeds.signer(task), self._seed_id, task.id, self._wall()).encode()

    def _issue(self, task: SeedTask, peer_id: str) -> str:
        return self.grant(peer_id, [task])[task.id]

    async def _check(self, task_id: str, source: Source) -> None:
        key = _credential_key(source)
        now = self._clock.monotonic()
        at = self._rights.get(key)
        if at is not None and now - at < self._ttl:
            return
        if self.known is not None and self._known(source):
            return
        status = await self._head(source)
        if status is None or not (200 <= status < 400):
            self._rights.pop(key, None)
            raise PullDenied(task_id, status)
        self._rights[key] = self._clock.monotonic()
        self._rights.move_to_end(key)
        while len(self._rights) > MAX_ENTRIES:
            self._rights.popitem(last=False)

    def _known(self, source: Source) -> bool:
        """The registry mirror let this credential into the blob's repository lately."""
        parts = urlsplit(source.url)
        name, sep, _ = parts.path.removeprefix("/v2/").rpartition("/blobs/")
        header = next((v for k, v in source.headers.items() if k.lower() == "authorization"), None)
        if not parts.path.startswith("/v2/") or not sep or not name or header is None or self.known is None:
            return False
        credential = "sha256:" + hashlib.sha256(header.encode()).hexdigest()  # Credential.key
        return self.known(parts.netloc, name, credential)

    async def _head(self, source: Source) -> int | None:
        """The status ``HEAD`` of the opener's URL with its own headers answers (a ranged
        ``GET`` of its first byte where HEAD is not allowed); redirects are not followed
        (the session checks every address against --upstream-allow)."""
        headers = {PEER_HEADER: "swarmpull", **source.headers}
        try:
            async with self._session.head(
                source.url, headers=headers, allow_redirects=False, timeout=self._timeout
            ) as resp:
                status = resp.status
            if status not in (405, 501):
                return status
            ranged = {**headers, "Range": "bytes=0-0"}
            async with self._session.get(
                source.url, headers=ranged, allow_redirects=False, timeout=self._timeout
            ) as resp:
                return resp.status  # the body is not read: the connection is closed
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            log.info("pull rights: the check failed: %s", type(exc).__name__)
            return None


class SeedKeyBook:
    """The keys the seed checks capabilities with: a task's own (those its statements are
    signed with, this replica's among them), for the tasks this replica owns."""

    def __init__(self, keys_of: Callable[[str], list[str] | None]) -> None:
        self._keys_of = keys_of
        self._cache: dict[str, tuple[tuple[str, ...], TaskKeys]] = {}

    def keys_for(self, task_id: str) -> TaskKeys | None:
        listed = self._keys_of(task_id)
        if not listed:
            self._cache.pop(task_id, None)
            return None
        cached = self._cache.get(task_id)
        if cached is not None and cached[0] == tuple(listed):
            return cached[1]
        keys = TaskKeys()
        for key in keys_from_json(listed):
            keys.add(key)
        self._cache[task_id] = (tuple(listed), keys)
        return keys
