"""Who gets a capability for a task (``swarmpull.core.capability``), and the keys the
seed checks them with.

A task is public when the seed's upstream read succeeded without credentials (no
``Authorization`` or ``Cookie`` header, no user info or query in the URL: a presigned
URL is a credential); that is recorded once per task, from the read that gave the
blob's size (``SeedTask.public``). Every opener of a public task gets a capability.
A private task's opener gets one only when its own URL, asked with its own headers,
serves the blob: ``PROOF_SPAN`` bytes at an offset chosen at random in the blob's first
MiB, the same as the seed's there (redirects followed as the seed's reads follow them).
That is proof of pull rights with its own credentials, whatever the credentials of the
first opener were. A status proves nothing: the task id is the blob's digest, so any
URL that answers 2xx to everything could name a private blob. The proof is cached per
(task, credentials, URL) for ``--auth-cache-ttl``, so a surge asks the upstream once per
credential and layer, not per open. A private task taken over from another replica knows
no public read: every opener proves its rights. Nothing stands in for the proof: a
registry's word that a credential may pull a repository holding the digest is the word
of whatever registry the opener's URL names (its own, say).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp

from supernode.seed_task import SeedTask, Source, TaskState
from swarmpull.core.capability import RENEW_BEFORE, CapabilityError, issue, issue_many, verify
from swarmpull.core.clock import Clock
from swarmpull.core.signing import Signer, TaskKeys, keys_from_json
from swarmpull.edges.http import PEER_HEADER
from swarmpull.edges.origin import CONTENT_RANGE, UpstreamError, follow
from swarmpull.edges.store import StoreError

log = logging.getLogger(__name__)

# Headers that carry no credential; any other a client sends may (an X-Api-Key as much as
# an Authorization), so a read that sent one is not a public read.
HARMLESS_HEADERS = frozenset(
    {"accept", "accept-encoding", "accept-language", "user-agent", PEER_HEADER.lower()}
)
MAX_ENTRIES = 10_000
PROOF_SPAN = 32  # bytes of the blob an opener's URL must serve to prove its pull rights
PROOF_WITHIN = 1 << 20  # from the blob's first MiB: what a server that ignores Range sends first
PROOF_WAIT = 0.05  # seconds between two looks for the seed's first piece
PROOFS_PER_PEER = 2  # proofs of one opener's running at once (the others wait their turn)


class PullDenied(Exception):
    """The opener could not prove it may pull a private blob."""

    def __init__(self, task_id: str, status: int | None, said: str | None = None) -> None:
        said = said or (f"answered {status}" if status is not None else "could not be asked")
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
    return any(name.lower() not in HARMLESS_HEADERS for name in source.headers)


def _credential_key(task_id: str, source: Source) -> str:
    """A name for a proof: the task, and the credentials ``source`` carries (not them)."""
    lines = sorted(f"{k.lower()}:{v}" for k, v in source.headers.items() if k.lower() not in HARMLESS_HEADERS)
    return hashlib.sha256("\n".join([task_id, source.url, *lines]).encode()).hexdigest()


class SeedTasks(Protocol):
    """The seed's side (``Seeding``): its tasks, the key each one's pieces are signed with
    (and every key they were), and a piece kept that a proof read."""

    tasks: dict[str, SeedTask]

    def signer(self, task: SeedTask) -> Signer: ...
    def keys(self, task: SeedTask) -> list[str]: ...
    def keep_piece(self, task: SeedTask, piece: int, data: bytes) -> None: ...


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
        self._keys = SeedKeyBook(lambda task_id: seeds.keys(t) if (t := seeds.tasks.get(task_id)) else None)
        self._rights: OrderedDict[str, float] = OrderedDict()  # credential key -> when proven
        self._proving: dict[str, asyncio.Future[None]] = {}  # credential key -> its proof under way
        self._deciding: dict[SeedTask, asyncio.Future[None]] = {}  # task -> its first bytes awaited
        self._turns: dict[str, asyncio.Semaphore] = {}  # opener -> its proofs' turns
        self._waiting: dict[str, int] = {}  # opener -> its proofs running or waiting
        self._whole = asyncio.Lock()  # whole-piece proofs, one at a time

    def __repr__(self) -> str:
        return f"<CapabilityDesk {len(self._rights)} rights cached>"

    async def check(self, task: SeedTask, source: Source, peer_id: str) -> None:
        """PullDenied for a private task whose opener's (``peer_id``) own URL and
        credentials (``source``) do not pass."""
        if task.public is None and not has_credentials(source):
            await self._decided(task)  # public or not: the attempt that delivers bytes says
            if task.state is TaskState.FAILED:
                return  # no bytes to be public or not: the opener hears of the failure
        if task.public is not True:
            await self._check(task, source, peer_id)

    async def _decided(self, task: SeedTask) -> None:
        """Returns once the read delivered its first bytes (``SeedTask.public`` is then
        decided), failed, or did not within the proof's timeout; one wait per task."""
        waiting = self._deciding.get(task)
        if waiting is None:
            waiting = self._deciding[task] = asyncio.ensure_future(self._first_bytes(task))
            waiting.add_done_callback(lambda _: self._deciding.pop(task, None))
        await asyncio.shield(waiting)

    async def _first_bytes(self, task: SeedTask) -> None:
        # The first piece held from before (a takeover, a restart): undecided, so proved.
        await self._until(task, lambda: task.public is not None or _holds_first(task))

    async def _until(self, task: SeedTask, ready: Callable[[], bool]) -> bool:
        """Whether ``ready()`` came true (looked at every ``PROOF_WAIT``) before the task
        failed or the proof's timeout passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self._timeout.total or 10.0)
        while not ready():
            if task.state is TaskState.FAILED or loop.time() >= deadline:
                return False
            await asyncio.sleep(PROOF_WAIT)
        return True

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

    def renew(self, task: SeedTask, peer_id: str, shown: str | None = None) -> str | None:
        """A fresh capability for a member (a report answer) once its latest is due. Of a
        private task, only for a member this replica let in, or one that ``shown`` a live
        capability of its own for the task, signed by one of the task's keys (a member of
        a task this replica took over): reporting on a task makes a peer a member, and the
        task is named by its digest, so a stranger that reports gets none; it opens the
        task, proving its rights."""
        expires = task.granted.get(peer_id)
        if expires is None and task.public is not True and not self._live(task, peer_id, shown):
            return None
        if expires is not None and expires - self._wall() >= RENEW_BEFORE:
            return None
        return self._issue(task, peer_id)

    def may_report(self, task: SeedTask, peer_id: str, shown: str | None) -> bool:
        """Whether ``peer_id`` may report on ``task`` (and so be a member, told its parents
        and their addresses, and heard on them): the blob is public, or the peer was let
        in here, or it shows a live capability of its own (a takeover's members)."""
        return self._let_in(task, peer_id) or self._live(task, peer_id, shown)

    def _live(self, task: SeedTask, peer_id: str, shown: str | None) -> bool:
        keys = self._keys.keys_for(task.id) if shown else None
        if not shown or keys is None:
            return False
        try:
            verify(shown, keys, task.id, peer_id, self._wall())
        except CapabilityError:
            return False
        return True

    def lets_in(self, task_id: str, peer_id: str) -> bool:
        """The blob is public, or ``peer_id`` holds a capability for it that is live."""
        task = self._seeds.tasks.get(task_id)
        return task is not None and self._let_in(task, peer_id)

    def _let_in(self, task: SeedTask, peer_id: str) -> bool:
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

    async def _check(self, task: SeedTask, source: Source, peer_id: str) -> None:
        key = _credential_key(task.id, source)
        now = self._clock.monotonic()
        at = self._rights.get(key)
        if at is not None and now - at < self._ttl:
            return
        self._rights.pop(key, None)
        proving = self._proving.get(key)
        if proving is None:  # one proof for the openers that come with the same credentials
            proving = self._proving[key] = asyncio.ensure_future(self._prove_in_turn(task, source, peer_id))
            proving.add_done_callback(lambda done: self._proved(key, done))
        await asyncio.shield(proving)  # PullDenied
        self._rights[key] = self._clock.monotonic()
        self._rights.move_to_end(key)
        while len(self._rights) > MAX_ENTRIES:
            self._rights.popitem(last=False)

    def _proved(self, key: str, done: asyncio.Future[None]) -> None:
        self._proving.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved: every opener that waited for it has it

    async def _prove_in_turn(self, task: SeedTask, source: Source, peer_id: str) -> None:
        """``_prove``, at most ``PROOFS_PER_PEER`` of one opener's at once: each holds an
        upstream connection (of the seed's reads' pool) for up to the timeout, at a URL
        the opener chose. A proof of a whole piece, one at a time (it is held in memory)."""
        gate = self._turns.get(peer_id)
        if gate is None:
            gate = self._turns[peer_id] = asyncio.Semaphore(PROOFS_PER_PEER)
        self._waiting[peer_id] = self._waiting.get(peer_id, 0) + 1
        try:
            async with gate:
                await self._prove(task, source)
        finally:
            self._waiting[peer_id] -= 1
            if not self._waiting[peer_id]:
                del self._waiting[peer_id], self._turns[peer_id]

    async def _prove(self, task: SeedTask, source: Source) -> None:
        """PullDenied unless the opener's URL, asked with its own headers, serves
        ``PROOF_SPAN`` bytes of the blob, at a random offset in its first MiB, that are the
        seed's there (or, where the seed holds only the first piece's sha256, that piece)."""
        blob = task.blob
        if blob is None:
            raise PullDenied(task.id, None)
        if blob.meta.size == 0:
            return  # nothing to keep private
        # The seed's bytes of the first piece (read first, in a moment); after a takeover,
        # perhaps only its sha256 (the bytes are with the peers): then the whole piece.
        if not await self._until(task, lambda: blob.is_verified(0) or task.shas.get(0) is not None):
            raise PullDenied(task.id, None, "could not be checked (the seed holds none of the blob)")
        first = blob.geometry.length(0)
        whole = not blob.is_verified(0)  # compared by its sha256
        if whole:
            offset, length, want = 0, first, bytes.fromhex(task.shas[0])
        else:
            length = min(PROOF_SPAN, first)
            offset = secrets.randbelow(min(first, PROOF_WITHIN) - length + 1)
            try:
                want = blob.read(offset, length)
            except (OSError, StoreError):  # evicted meanwhile
                raise PullDenied(task.id, None, "could not be checked (the seed let the blob go)") from None
        headers = {
            PEER_HEADER: "swarmpull",
            **source.headers,
            "Range": f"bytes={offset}-{offset + length - 1}",
        }
        status = None
        try:
            async with (
                self._whole if whole else contextlib.nullcontext(),
                follow(self._session, source.url, headers, self._timeout) as resp,
            ):
                status = resp.status
                if status == 206:
                    match = CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                    if match is None or int(match.group(1)) != offset:
                        raise PullDenied(task.id, status, "answered a range it was not asked for")
                elif status == 200:
                    await resp.content.readexactly(offset)  # it ignored the range
                else:
                    raise PullDenied(task.id, status)
                got = await resp.content.readexactly(length)
        except (UpstreamError, aiohttp.ClientError, asyncio.IncompleteReadError, OSError, ValueError) as exc:
            log.info("pull rights: the check failed: %s", type(exc).__name__)
            said = "could not be asked" if status is None else f"answered {status} with less than was asked"
            raise PullDenied(task.id, status, said) from None
        if (hashlib.sha256(got).digest() if whole else got) != want:
            raise PullDenied(task.id, status, f"answered {status} with bytes that are not the blob's")
        if whole:  # the next proofs: a span of these bytes
            self._seeds.keep_piece(task, 0, got)


def _holds_first(task: SeedTask) -> bool:
    return task.blob is not None and task.blob.is_verified(0)


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
