"""Preheat on the supernode: resolve the image, read each blob into the seed once, make
its torrent, and hand the blobs to every selected node, which fetches them over
BitTorrent in the background and reports its progress.

``Preheats`` is the one writer of the jobs, on the supernode's event loop. Each job runs
one task that resolves the image (``RegistryAccess``, with the supernode's own registry
login) and seeds its blobs concurrently (``Opening.seed_blob``: the same task,
the same single read from the registry, as a pull of that blob would use). Nodes poll
(``poll``) with their progress; a poll with nothing new to say waits for a change (a
job created or ended, a blob seeded), so idle nodes cost one call per half minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterator

from supernode.preheat.jobs import JobState, Layer, LayerState, PreheatJob
from supernode.seed_task import ShuttingDown, TaskFailed
from supernode.service import SupernodeService
from supernode.torrents import NotSeeded, SeedTorrents
from swarmpull.core.clock import Clock
from swarmpull.core.preheat import MAX_LAYERS, PreheatBlob, PreheatPoll, PreheatRequest, PreheatWork
from swarmpull.edges.listener import Parked
from swarmpull.edges.registry import OWN, RegistryAccess, RegistryError
from swarmpull.edges.store import StoreError

log = logging.getLogger(__name__)

KEEP_ENDED = 3600.0  # seconds an ended job's status stays readable
MAX_JOBS = 1000
POLL_IN = 2.0  # seconds between polls of a node that has preheat work
POLLS_PER_NODE = 2  # a node's loop waits in one poll; one more covers a restart's overlap


class UnknownJob(Exception):
    """No preheat job has this id (or it ended long ago)."""


class TooManyJobs(Exception):
    """As many preheats run as this supernode keeps: one must end first."""


class TooManyPolls(Exception):
    """A node waits in as many polls as it may, or the process in as many as it may hold
    (each holds a connection the budget does not shed)."""


class Preheats:
    def __init__(
        self,
        service: SupernodeService,
        access: RegistryAccess,
        torrents: SeedTorrents,
        clock: Clock,
        tick_interval: float = 1.0,
    ) -> None:
        self._service = service
        self._access = access
        self._torrents = torrents
        self._clock = clock
        self._tick_interval = tick_interval
        self._jobs: dict[str, PreheatJob] = {}
        self._runs: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self.version = 0  # bumped by every change a node may need to hear of
        self._changed = asyncio.Event()
        self._waiting = Parked(POLLS_PER_NODE)  # polls waiting for news

    def __repr__(self) -> str:
        return f"<Preheats jobs={len(self._jobs)} version={self.version}>"

    async def start(self) -> None:
        self._ticker = asyncio.create_task(self._tick_loop(), name="preheat-tick")

    async def stop(self) -> None:
        tasks = [*self._runs, *([self._ticker] if self._ticker else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._runs.clear()
        self._ticker = None
        self._change()  # parked polls answer now

    # -------------------------------------------------------------------- jobs

    def create(self, request: PreheatRequest) -> PreheatJob:
        now = self._clock.monotonic()
        if len(self._jobs) >= MAX_JOBS:
            raise TooManyJobs(f"{MAX_JOBS} preheats are kept already")
        job = PreheatJob(
            uuid.uuid4().hex[:16],
            str(request.image),
            str(request.platform) if request.platform else "all",
            request.selection,
            now,
            now + request.deadline,
        )
        for peer_id, (zone, rack) in self._service.presence.live().items():
            job.offer(peer_id, zone, rack)
        self._jobs[job.id] = job
        run = asyncio.create_task(self._run(job, request), name=f"preheat-{job.id}")
        self._runs.add(run)
        run.add_done_callback(self._runs.discard)
        log.info("preheat %s: %s (%s) to %d nodes so far", job.id, job.image, job.platform, len(job.nodes))
        self._change()
        return job

    def status(self, job_id: str) -> dict[str, object]:
        job = self._jobs.get(job_id)
        if job is None:
            raise UnknownJob(job_id)
        return job.status(self._clock.monotonic())

    async def _run(self, job: PreheatJob, request: PreheatRequest) -> None:
        try:
            manifests = await self._access.image(request.image, request.platform, OWN)
            upstream = self._access.upstream(request.image.host)
            layers = []
            for manifest in manifests:
                parsed = manifest.parsed()
                if not parsed.is_index:
                    for blob in parsed.blobs:
                        url = upstream.url(request.image.name, "blobs", str(blob.digest))
                        repository = f"{request.image.host}/{request.image.name}"
                        layers.append(Layer(blob.digest, blob.size, url, repository))
        except (RegistryError, ValueError) as exc:
            self._ended(job, f"cannot read {job.image}: {exc}")
            return
        job.resolved(layers)
        self._change()
        # The login that read the manifests reads the blobs (a bearer token is per repository).
        header = self._access.authorization(upstream, request.image.name)
        headers = {"Authorization": header} if header else {}
        await asyncio.gather(*(self._seed(job, layer, headers) for layer in job.layers))

    async def _seed(self, job: PreheatJob, layer: Layer, headers: dict[str, str]) -> None:
        """One blob into the seed, and its torrent made, before nodes are sent for it."""
        try:
            task = await self._service.opening.seed_blob(layer.url, layer.digest, headers)
            if task.blob is None:  # seed_blob returns a task whose blob it verified
                raise RuntimeError(f"task {layer.task_id} was seeded without a blob")
            await self._torrents.torrent(task.blob)
            layer.private = task.public is not True
        except (TaskFailed, NotSeeded, StoreError, ShuttingDown) as exc:
            job.layer_failed(self._clock.monotonic(), layer.task_id, str(exc))
            self._ended(job, None)
            return
        if job.active:
            job.layer_ready(layer.task_id)
            log.info("preheat %s: %s seeded (%d bytes)", job.id, layer.task_id, layer.size)
            self._change()

    def _ended(self, job: PreheatJob, error: str | None) -> None:
        if error is not None:
            job.failed(self._clock.monotonic(), error)
        log.warning("preheat %s %s: %s", job.id, job.state.value, job.error or "")
        self._change()

    # ------------------------------------------------------------------- nodes

    async def poll(self, node: str, poll: PreheatPoll) -> PreheatWork:
        """A node's progress in, its work out; with ``poll.wait``, held until there is
        news for it (or the wait is over)."""
        zone, rack = self._service.presence.labels(node)
        self._record(node, poll)
        deadline = self._clock.monotonic() + poll.wait
        work = self._work(node, zone, rack)
        if work.version != poll.after or poll.wait <= 0:
            return work
        if self._waiting.full(node):
            raise TooManyPolls(f"{node} waits in as many preheat polls as it may")
        with self._waiting.parked(node):
            while True:
                left = deadline - self._clock.monotonic()
                if work.version != poll.after or left <= 0:
                    return work
                changed = self._changed
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        await changed.wait()
                work = self._work(node, zone, rack)

    def _record(self, node: str, poll: PreheatPoll) -> None:
        now = self._clock.monotonic()
        for entry in poll.progress:
            state = LayerState(entry.state)
            for job in self._jobs.values():
                job.progress(node, entry.task_id, state, entry.done, entry.error)
            if state is LayerState.COMPLETE and self._holds_by_right(entry.task_id, node):
                self._service.membership.holds_blob(node, entry.task_id)
        for job in self._jobs.values():
            if job.tick(now):
                self._log_end(job)
                self._change()

    def _holds_by_right(self, task_id: str, node: str) -> bool:
        """A job gave ``node`` the blob, and the node may have it (public, or it proved
        its pull rights): only then does its word make it a source of the blob."""
        given = next(self._given(task_id, node), None) is not None
        return given and self._service.capabilities.lets_in(task_id, node)

    def assigned(self, task_id: str, node: str) -> bool:
        """A job gave ``node`` the blob of ``task_id`` to hold, and the blob is public: it
        may have its torrent. A private blob's torrent needs the node's own pull rights
        (it opens the task with its own login first, as any pull)."""
        return any(not layer.private for layer in self._given(task_id, node))

    def _given(self, task_id: str, node: str) -> Iterator[Layer]:
        """The layers of ``task_id`` the jobs gave ``node`` to hold."""
        for job in self._jobs.values():
            yield from (layer for layer in job.assigned(node) if layer.task_id == task_id)

    def _work(self, node: str, zone: str | None, rack: str | None) -> PreheatWork:
        """The blobs ``node`` is to hold, at most ``MAX_LAYERS`` (what one answer carries),
        those it has not completed first: the rest come in later answers as it completes
        these (forty images of thirty layers preheated at once are 1,200 blobs)."""
        layers: dict[str, PreheatBlob] = {}
        done: set[str] = set()
        for job in self._jobs.values():
            if job.offer(node, zone, rack):  # a node that joined since matches too
                for layer in job.assigned(node):
                    image = layer.repository if layer.private else None
                    layers[layer.task_id] = PreheatBlob(layer.task_id, layer.size, image)
                    if job.completed(node, layer.task_id):
                        done.add(layer.task_id)
        chosen = sorted(sorted(layers), key=lambda task_id: task_id in done)[:MAX_LAYERS]
        return PreheatWork(self.version, [layers[t] for t in sorted(chosen)], POLL_IN)

    # -------------------------------------------------------------------- time

    def _change(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def _log_end(self, job: PreheatJob) -> None:
        unfinished = job.unfinished()
        if job.state is JobState.COMPLETE:
            log.info("preheat %s complete: %d nodes hold %s", job.id, len(job.nodes), job.image)
        else:
            log.warning(
                "preheat %s %s; unfinished: %s", job.id, job.state.value, ", ".join(unfinished) or "-"
            )

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self._tick_interval)
            now = self._clock.monotonic()
            for job in list(self._jobs.values()):
                if job.tick(now):
                    self._log_end(job)
                    self._change()
                if job.ended is not None and now - job.ended > KEEP_ENDED:
                    del self._jobs[job.id]
