"""The seed: the supernode's blobs, each read from upstream once and signed piece by piece.

``Seeding`` owns every ``SeedTask``: it starts the back-to-source read when a task is
created, records each piece the read reports with a statement signed by this supernode
(peers check pieces against it and relay it), tells the scheduler what the seed holds,
and fails a task at once when the upstream says no or its bytes do not match the digest.
With replicas it also stages what a successor needs (``ClusterState``): each piece's
sha256 as it is verified, and its bytes until a peer holds it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable

import aiohttp

from supernode.blame import BlameBook
from supernode.capabilities import has_credentials
from supernode.cluster import ClusterState, Lease, TaskRecord
from supernode.config import SupernodeConfig
from supernode.metrics import SupernodeMetrics
from supernode.scheduler import Scheduler
from supernode.seed_task import SeedTask, Source, TaskFailed, TaskState
from swarmpull.core.clock import Clock
from swarmpull.core.digest import Digest
from swarmpull.core.events import NO_EVENTS, EventSink
from swarmpull.core.geometry import choose_piece_size
from swarmpull.core.signing import Signer, keys_to_json
from swarmpull.core.tasks import redact_url
from swarmpull.edges.origin import Authorize, UpstreamError, UpstreamFetch
from swarmpull.edges.store import BlobMeta, PieceStore, StoredBlob, StoreError, StoreFull

log = logging.getLogger(__name__)


class Seeding:
    """The one writer of the seed's tasks (on the supernode's event loop)."""

    def __init__(
        self,
        config: SupernodeConfig,
        store: PieceStore,
        session: aiohttp.ClientSession,
        clock: Clock,
        scheduler: Scheduler,
        signer: Signer,
        cluster: ClusterState,
        metrics: SupernodeMetrics,
        events: EventSink = NO_EVENTS,
    ) -> None:
        self.config = config
        self.store = store
        self.events = events
        self.tasks: dict[str, SeedTask] = {}
        self._session = session
        self._clock = clock
        self._scheduler = scheduler
        self._signer = signer
        self._cluster = cluster
        self._metrics = metrics
        self.on_changed: Callable[[], None] = lambda: None  # staged bytes: write through soon
        self.authorize: Authorize | None = None  # an anonymous token for reads without credentials
        self._staged_bytes = 0
        self.blame = BlameBook(config.blame)  # the URLs that lied about a blob

    @property
    def session(self) -> aiohttp.ClientSession:
        """The guarded session every upstream request goes through (--upstream-allow)."""
        return self._session

    def restore(self, lease: Lease) -> None:
        """Know the blobs the seed cache kept from an earlier run, before anyone asks, so
        returning peers can announce theirs (a single supernode: replicas claim first)."""
        for blob in self.store.blobs():
            if blob.all_verified and not blob.complete:
                self.store.remove(blob.task_id)  # crashed between last piece and completion
                continue
            digest = Digest.parse(blob.meta.digest) if blob.meta.digest else None
            expected = digest if blob.task_id.startswith("sha256-") else None
            if any(s.key != self._signer.key_id for s in blob.statements.values()):
                self.store.remove(blob.task_id)  # signed with a key of one read, gone with it
                continue
            task = SeedTask(blob.task_id, Source(""), expected)
            task.lease = lease
            task.used_at = self._clock.monotonic()
            self.tasks[blob.task_id] = task
            self._adopt(task, blob)
            # A partial blob resumes when a peer opens the task again (with its URL).
            task.state = TaskState.SEEDED if blob.complete else TaskState.PARTIAL
            task.digest = digest

    async def stop(self) -> None:
        fetches = [t.fetch for t in self.tasks.values() if t.fetch is not None]
        for fetch in fetches:
            fetch.cancel()
        await asyncio.gather(*fetches, return_exceptions=True)

    # ------------------------------------------------------------------- tasks

    def check_source(self, task_id: str, source: Source) -> None:
        """TaskFailed (refused) if ``source``'s URL sent bytes that did not match this
        blob's digest before: it is never this blob's source again (while remembered)."""
        if self.blame.refused(task_id, source.url, self._clock.monotonic()):
            raise TaskFailed(
                f"{redact_url(source.url)} sent content that does not match {task_id} before; "
                "the supernode does not read this blob from it",
                refused=True,
            )

    def create(self, task_id: str, source: Source, expected: Digest | None, lease: Lease) -> SeedTask:
        """A task nobody owns: from the seed cache if it holds the blob, else from upstream."""
        task = SeedTask(task_id, source, expected)
        task.lease = lease
        task.used_at = self._clock.monotonic()
        self.tasks[task_id] = task
        self._sign_apart(task)
        blob = self.store.get(task_id)
        if blob is not None and blob.complete and (expected is None or blob.meta.digest == str(expected)):
            self._adopt(task, blob)
            task.state = TaskState.SEEDED
            task.digest = Digest.parse(blob.meta.digest) if blob.meta.digest else expected
            return task
        self.start_fetch(task)
        return task

    def start_fetch(self, task: SeedTask, elsewhere: frozenset[int] = frozenset()) -> None:
        if task.fetch is not None and not task.fetch.done():
            return
        # After a read that failed its digest (from URLs mixed, so nobody was blamed), the
        # pieces are handed out only once the whole digest matched: a read broken off is
        # then started again from nothing, from one URL, and a bad one has a culprit.
        hold_back = not elsewhere and self.blame.poisoned(task.id, self._clock.monotonic())
        events = _FetchEvents(self, task, hold_back)
        fetch = UpstreamFetch(
            self._session,
            lambda broken: _read_source(task, broken),
            task.expected,
            events,
            self.config.upstream,
            on_bytes=self._metrics.upstream_bytes.inc,
            throttle=self._cluster.origins.for_url(task.url),
            authorize=self.authorize,
        )
        task.state = TaskState.RUNNING if task.blob is not None else TaskState.PENDING
        if task.blob is not None:
            self._hold(task, task.blob)
        task.fetch = asyncio.create_task(fetch.run(task.blob, elsewhere), name=f"origin-{task.id[:20]}")
        task.fetch.add_done_callback(lambda done: self._fetch_done(task, fetch, events, done))

    def fail(self, task: SeedTask, message: str, status: int | None, bad_data: bool = False) -> None:
        log.warning("task %s failed: %s", task.id, message)
        task.state = TaskState.FAILED
        task.error, task.error_status = message, status
        task.failed_at = self._clock.monotonic()
        self._metrics.tasks.labels("failed").inc()
        self.events.emit("task_finished", task=task.id, ok=False, error=message)
        if not task.ready.done():
            task.ready.set_result(None)
        self._scheduler.remove_task(task.id)
        self._forget_staged(task)
        if bad_data and task.blob is not None:
            self.store.remove(task.id)  # a lying upstream's bytes are not kept
            task.batch.reset = True  # nor passed on to another replica
        task.blob = None

    def drop(self, task: SeedTask, why: str) -> None:
        """Another replica may own the task now (or nobody wants it): stop acting for it."""
        log.info("task %s: let go (%s)", task.id, why)
        task.lease = None
        if task.fetch is not None:
            task.fetch.cancel()
        if self.tasks.get(task.id) is task:
            del self.tasks[task.id]
        self._scheduler.remove_task(task.id)
        self._forget_staged(task)

    def take_over(
        self, task_id: str, source: Source, expected: Digest | None, lease: Lease, record: TaskRecord,
        holders: dict[str, int],
    ) -> SeedTask:  # fmt: skip
        """Continue a task an earlier owner left: its staged pieces into our store (checked
        against their sha256), then read from upstream only what nobody holds."""
        task = SeedTask(task_id, source, expected)
        task.lease = lease
        task.used_at = self._clock.monotonic()
        self.tasks[task_id] = task
        self._sign_apart(task)
        task.shas = record.sha
        task.sha_mask = sum(1 << piece for piece in record.sha)
        task.keys = record.keys
        task.digest = Digest.parse(record.digest) if record.digest else expected
        blob = self.store.get(task_id)
        if blob is None or (blob.meta.size, blob.meta.piece_size) != (record.size, record.piece_size):
            if blob is not None:
                self.store.remove(task_id)
            meta = BlobMeta(task_id, record.size, record.piece_size, record.digest, redact_url(source.url))
            blob = self.store.create(meta)
        for piece, data in record.staged.items():  # read from upstream before, held by no peer
            self._keep(task, blob, piece, data, record.sha.get(piece))
        task.staged = set(record.staged) & set(blob.verified_pieces())
        self._adopt(task, blob)
        held = blob.have
        for have in holders.values():
            held |= have
        missing = blob.geometry.count - held.bit_count()
        if missing:
            seeded = blob.have
            self.start_fetch(
                task, frozenset(p for p in range(blob.geometry.count) if (held & ~seeded) >> p & 1)
            )
        else:
            task.state = TaskState.SEEDED
        log.info(
            "task %s taken over: %d pieces on %d peers, %d staged, %d to read from upstream",
            task_id,
            (held & ~blob.have).bit_count(),
            len(holders),
            len(task.staged),
            missing,
        )
        return task

    def keep_piece(self, task: SeedTask, piece: int, data: bytes) -> None:
        """Bytes of a piece the seed knows only by the sha256 an earlier owner recorded
        (a proof of pull rights read them), kept once they check: the seed serves them,
        and compares the next proofs with them."""
        if task.blob is None:
            return
        try:
            kept = self._keep(task, task.blob, piece, data, task.shas.get(piece))
        except (StoreError, OSError) as exc:
            log.warning("%s: could not keep piece %d: %s", task.id, piece, exc)
            return
        if kept:
            self._scheduler.piece_seeded(task.id, piece)

    def _keep(self, task: SeedTask, blob: StoredBlob, piece: int, data: bytes, sha: str | None) -> bool:
        """Whether ``data``, known only by its ``sha`` so far, checked and went into the
        seed's store as the piece (signed by this replica)."""
        if blob.is_verified(piece) or not sha or hashlib.sha256(data).hexdigest() != sha:
            return False
        writer = blob.writer(piece)
        writer.write(data)
        writer.commit(sha, statement=self.signer(task).piece(task.id, piece, sha))
        return True

    def owned(self, task_id: str) -> SeedTask | None:
        """The task, if this supernode may act for it (holds its lease); one whose lease
        lapsed is let go."""
        task = self.tasks.get(task_id)
        if task is None:
            return None
        if task.lease is None or task.lease.valid_until < self._clock.monotonic():
            self.drop(task, "its lease could not be renewed")
            return None
        return task

    # ---------------------------------------------------------------- replicas

    def holds(self, task: SeedTask, peer_id: str, have_text: str, have: int) -> None:
        """A peer holds these pieces now: a successor should know, and the cluster need
        not keep their bytes any more."""
        if not self._cluster.shared:
            return
        task.batch.holders[peer_id] = have_text
        for piece in [p for p in task.staged if have >> p & 1]:
            task.staged.discard(piece)
            task.batch.unstaged.add(piece)
            task.batch.staged.pop(piece, None)
            if task.blob is not None:
                self._staged_bytes -= task.blob.geometry.length(piece)

    def left(self, task: SeedTask, peer_id: str) -> None:
        if self._cluster.shared:
            task.batch.holders[peer_id] = None

    # ----------------------------------------------------------------- signing

    def signer(self, task: SeedTask) -> Signer:
        """The key this task's pieces are signed with."""
        return task.signer or self._signer

    def keys(self, task: SeedTask) -> list[str]:
        """The keys of a task's statements and capabilities, as answers carry them: its
        signer's and an earlier owner's."""
        if task.key_list is None:
            task.key_list = sorted({*keys_to_json([self.signer(task).public_key]), *task.keys})
        return task.key_list

    def _sign_apart(self, task: SeedTask) -> None:
        """A blob whose last read failed its digest is read again under a key of its own.

        That read's pieces were signed (and served) before the whole digest was checked,
        and the statements outlive the task: an honest peer that left before the failure
        keeps them with its pieces, a hostile one relays them. Under a new key nobody
        trusts them any more: peers check statements against the keys the open names,
        which are this read's only (and the keys of replicas that took it over). A peer
        that holds pieces from before checks their statements against those keys and
        drops them (``peer.download``), and the supernode vouches for no piece a peer
        says it held before this read (``Membership``). The key lives as long as the
        process: the seed drops such a blob at restart rather than keep what it cannot
        vouch for."""
        if self.blame.poisoned(task.id, self._clock.monotonic()):
            task.signer = Signer.generate()
            log.info("task %s: read again after a poisoned read, under a key of its own", task.id)

    # --------------------------------------------------------------- internals

    def _adopt(self, task: SeedTask, blob: StoredBlob) -> None:
        """The task's geometry is known: schedule it, with the pieces the seed holds."""
        task.blob = blob
        task.state = TaskState.RUNNING
        self._scheduler.add_task(task.id, blob.geometry.count, self.config.seed_id, blob.meta.piece_size)
        for piece in blob.verified_pieces():
            self._scheduler.piece_seeded(task.id, piece)
        if not task.ready.done():
            task.ready.set_result(None)

    def _geometry(self, task: SeedTask, size: int) -> StoredBlob:
        piece_size = self.config.piece_size or choose_piece_size(size)
        meta = BlobMeta(
            task.id,
            size,
            piece_size,
            digest=str(task.expected) if task.expected else None,
            url=redact_url(task.url),
        )
        blob = self.store.create(meta)
        self._hold(task, blob)
        task.batch.meta.update(size=str(size), piece_size=str(piece_size))
        task.batch.keys.add(keys_to_json([self.signer(task).public_key])[0])
        self._adopt(task, blob)
        return blob

    def _hold(self, task: SeedTask, blob: StoredBlob) -> None:
        """Keep the blob a read writes from eviction (a store full of new blobs evicted
        reads under way): until the read ends, ``_fetch_done``. A store full of blobs
        in use refuses the next new one instead."""
        if task.held is None:
            self.store.hold(blob)
            task.held = blob

    def _piece(self, task: SeedTask, index: int, sha: str) -> None:
        blob = task.blob
        if blob is None:
            return
        if task.public is None and task.read_source is not None:  # once per task
            # Public only if the attempt that delivered bytes carried no credentials (not
            # the first to answer: a URL that names the size and sends nothing decides
            # nothing), and from then on read only that way (``_read_source``).
            task.public = not has_credentials(task.read_source)
        blob.record(index, sha, self.signer(task).piece(task.id, index, sha))
        self._scheduler.piece_seeded(task.id, index)
        self.events.emit("upstream_read", task=task.id, piece=index, bytes=blob.geometry.length(index))
        if self._cluster.shared:
            self._stage(task, blob, index, sha)

    def _stage(self, task: SeedTask, blob: StoredBlob, piece: int, sha: str) -> None:
        """A piece read from upstream: keep its sha256, and its bytes until a peer holds
        it, where a successor replica finds them (within the staging budget). Written
        through at once, not at the next tick: a replica killed mid-read loses little."""
        task.batch.sha[piece] = sha
        length = blob.geometry.length(piece)
        if self._staged_bytes + length <= self.config.stage_limit:
            task.batch.staged[piece] = blob.read_piece(piece)
            task.staged.add(piece)
            self._staged_bytes += length
        self.on_changed()

    def _forget_staged(self, task: SeedTask) -> None:
        """The task is no longer ours to serve: its staged pieces (left in the cluster for a
        successor) no longer count against this replica's budget."""
        if task.blob is not None:
            self._staged_bytes -= sum(task.blob.geometry.length(p) for p in task.staged)
        task.staged.clear()

    def _fetch_done(
        self, task: SeedTask, fetch: UpstreamFetch, events: _FetchEvents, done: asyncio.Task[None]
    ) -> None:
        if task.held is not None:  # the read no longer writes it: evictable as any other
            self.store.release(task.held)
            task.held = None
        if done.cancelled():
            return
        exc = done.exception()
        if exc is None:
            events.release()
            blob = task.blob
            if blob is not None and blob.all_verified:  # after a takeover, peers may hold what we do not
                try:
                    blob.mark_complete(str(task.digest))
                except StoreError as error:
                    self.fail(task, f"seed store: {error}", None)
                    return
            task.state = TaskState.SEEDED
            self._metrics.tasks.labels("seeded").inc()
            size = blob.meta.size if blob else None
            digest = str(task.digest) if task.digest else None
            self.events.emit("task_finished", task=task.id, ok=True, size=size, digest=digest)
            log.info("task %s seeded (%d bytes)", task.id, blob.meta.size if blob else 0)
            return
        if isinstance(exc, UpstreamError | StoreFull | StoreError):
            message, status = str(exc), getattr(exc, "status", None)
        else:
            log.error("task %s: back-to-source crashed", task.id, exc_info=exc)
            message, status = f"internal error: {type(exc).__name__}", None
        bad_data = isinstance(exc, UpstreamError) and exc.bad_data
        if bad_data:
            self.blame.poison(task.id, self._clock.monotonic())
            self._blame(task, fetch)
        definitive = isinstance(exc, UpstreamError) and exc.definitive
        task.retryable = isinstance(exc, UpstreamError | StoreError) and not definitive
        task.refused = isinstance(exc, UpstreamError) and exc.refused  # --upstream-allow: a 4xx
        self.fail(task, message, status, bad_data=bad_data)

    def _blame(self, task: SeedTask, fetch: UpstreamFetch) -> None:
        """The whole digest did not match: pin it on the URL that wrote the blob, which is
        then refused as this blob's source (``blame``). When a resumed read mixed URLs (one
        requester's cut short, the next requester's from there) nobody can tell which of
        them lied, and blaming the last one would let a liar get an honest requester's URL
        refused: then nobody is blamed, every suspect is logged, and the task fails as
        any bad read does (the next read starts from nothing, so one URL writes it all)."""
        culprit = fetch.sole_writer
        if culprit is None:
            suspects = ", ".join(redact_url(url) for url in fetch.writers) or "unknown"
            log.warning("task %s: bytes that do not match the digest came from one of: %s", task.id, suspects)
            return
        log.warning(
            "task %s: %s sent bytes that do not match the digest; refused as its source from now on",
            task.id,
            redact_url(culprit),
        )
        self.blame.blame(task.id, culprit, self._clock.monotonic())


class _FetchEvents:
    """Connects one task's ``UpstreamFetch`` to the seeding."""

    def __init__(self, seeding: Seeding, task: SeedTask, hold_back: bool) -> None:
        self._seeding = seeding
        self._task = task
        self._held: dict[int, str] | None = {} if hold_back else None

    def geometry(self, size: int) -> StoredBlob:
        return self._seeding._geometry(self._task, size)

    def digest(self, digest: Digest) -> None:
        self._task.digest = digest
        self._task.batch.meta["digest"] = str(digest)

    def piece(self, index: int, sha: str) -> None:
        if self._held is None:
            self._seeding._piece(self._task, index, sha)
        else:  # unrecorded, so a read that breaks off starts again from the first byte
            self._held[index] = sha

    def release(self) -> None:
        """The read is done and its digest matched: record what was held back."""
        held, self._held = self._held or {}, None
        for index, sha in sorted(held.items()):
            self._seeding._piece(self._task, index, sha)


def _read_source(task: SeedTask, broken: frozenset[str]) -> tuple[str, dict[str, str]]:
    """The URL and headers of a read attempt: the newest requester's whose answer did not
    break off in this read (a requester that keeps asking cannot keep every retry to its
    own URL), remembered so that the blob is public only if the attempt that delivered
    its bytes carried no credentials. A blob found public is read on without any: bytes
    a credential fetched never reach openers let in as to a public blob."""
    usable = task.sources
    if task.public is True and task.read_source is not None:  # the one that found it public, at worst
        usable = [s for s in task.sources if not has_credentials(s)] or [task.read_source]
    source = next((s for s in usable if s.url not in broken), usable[0])
    task.read_source = source
    return source.url, source.headers
