"""The node's part in preheats: ask the supernode which blobs to hold, fetch them in the
background over BitTorrent, say how far each got.

One loop, the one writer of this node's preheat state: it polls the supernode with its
progress (``POST /api/v1/peers/{me}/preheat``), starts a background fetch
(``TorrentTransport``) for each blob it was given and does not hold, and stops those it
is no longer given (a job expired). While fetches run it reports every ``poll_in``
seconds; idle, it long-polls, so a node waiting for work costs the supernode one call
per ``IDLE_WAIT``. A fetch that failed is tried again after ``RETRY_AFTER``. After a
restart the loop starts afresh: the supernode gives the same blobs again and libtorrent
resumes from the partial files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from peer.control import Control
from peer.link import LinkError, SupernodeUnavailable
from peer.rest import SupernodeRest
from peer.torrents import TorrentTransport, TorrentUnavailable
from swarmpull.core.blobs import DownloadFailed
from swarmpull.core.clock import Clock
from swarmpull.core.digest import Digest
from swarmpull.core.fields import ProtocolError
from swarmpull.core.preheat import LayerProgress, PreheatBlob, PreheatPoll, parse_preheat_work
from swarmpull.core.protocol import OpenTask
from swarmpull.core.rates import Priority
from swarmpull.edges.store import PieceStore, StoredBlob

log = logging.getLogger(__name__)

# ``(image, digest)`` -> the blob's URL and the headers of this node's own registry login
# (DownloadFailed, ``denied``, when that login may not pull it).
RegistryLogin = Callable[[str, Digest], Awaitable[tuple[str, dict[str, str]]]]

IDLE_WAIT = 25.0  # seconds an idle poll waits for work
RETRY_AFTER = 10.0  # seconds before a failed blob is tried again
MAX_BACKOFF = 30.0


class Preheater:
    def __init__(
        self,
        rest: SupernodeRest,
        torrents: TorrentTransport,
        store: PieceStore,
        control: Control,
        clock: Clock,
        login: RegistryLogin | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._rest = rest
        self._login = login
        self._timeout = timeout
        self._torrents = torrents
        self._store = store
        self._control = control
        self._clock = clock
        self._assigned: dict[str, PreheatBlob] = {}
        self._fetches: dict[str, asyncio.Task[StoredBlob]] = {}
        self._failed: dict[str, tuple[float, str]] = {}  # task -> (when, why)
        self._reported: list[LayerProgress] = []
        self._woken = asyncio.Event()

    def __repr__(self) -> str:
        return f"<Preheater assigned={len(self._assigned)} fetching={len(self._fetches)}>"

    async def run(self) -> None:
        version, backoff = -1, 1.0
        try:
            while True:
                progress = self._progress()
                busy = bool(self._fetches) or progress != self._reported
                wait = 0.0 if busy else IDLE_WAIT
                try:
                    await self._control.ensure_registered()
                    answer = await self._rest.call(
                        "preheat", PreheatPoll(progress, version, wait).to_json(), timeout=wait + 15.0
                    )
                    work = parse_preheat_work(answer)
                except LinkError as exc:
                    if exc.code == "UNKNOWN_PEER":
                        self._control.lost()
                    await self._pause(backoff, exc)
                    backoff = min(backoff * 2, MAX_BACKOFF)
                    continue
                except (SupernodeUnavailable, ProtocolError) as exc:
                    await self._pause(backoff, exc)
                    backoff = min(backoff * 2, MAX_BACKOFF)
                    continue
                backoff = 1.0
                version = work.version
                self._reported = progress
                self._assign({blob.task_id: blob for blob in work.layers})
                if self._fetches:
                    self._woken.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(work.poll_in):
                            await self._woken.wait()  # a fetch ended: report it now
        finally:
            for fetch in self._fetches.values():
                fetch.cancel()
            await asyncio.gather(*self._fetches.values(), return_exceptions=True)

    async def _pause(self, seconds: float, why: Exception) -> None:
        log.warning("preheat: the supernode did not answer a poll (%s); again in %.0fs", why, seconds)
        await asyncio.sleep(seconds)

    def _assign(self, layers: dict[str, PreheatBlob]) -> None:
        """Fetch what is given and not held; stop what is no longer given."""
        for task_id in [t for t in self._fetches if t not in layers]:
            self._torrents.withdraw(task_id)
            self._fetches[task_id].cancel()
        self._assigned = layers
        now = self._clock.monotonic()
        for task_id, blob in layers.items():
            held = self._store.get(task_id)
            if (held is not None and held.complete) or task_id in self._fetches:
                continue
            failed = self._failed.get(task_id)
            if failed is not None and now - failed[0] < RETRY_AFTER:
                continue
            self._failed.pop(task_id, None)
            fetch = asyncio.create_task(self._fetch(blob), name=f"preheat-{task_id[:20]}")
            self._fetches[task_id] = fetch
            fetch.add_done_callback(lambda done, t=task_id: self._ended(t, done))  # type: ignore[misc]
            log.info("preheat: fetching %s (%d bytes) in the background", task_id, blob.size)

    async def _fetch(self, blob: PreheatBlob) -> StoredBlob:
        """The blob over BitTorrent; a private one once this node's own login pulls it."""
        if blob.image is not None:
            await self._prove(blob.task_id, blob.image)
        # Shielded: a pull may have joined the torrent; only ``withdraw`` stops a background one.
        return await asyncio.shield(self._torrents.fetch(blob.task_id, Priority.BACKGROUND))

    async def _prove(self, task_id: str, image: str) -> None:
        """Open the task with this node's own registry login: the supernode checks its
        pull rights and grants it a capability (the torrent needs one); DownloadFailed
        (``denied``) when it may not pull the blob."""
        if self._login is None:
            raise DownloadFailed(
                f"{task_id} is private and this node has no registry login of its own "
                "(the registry proxy's --registry-auth)",
                denied=True,
            )
        digest = Digest.parse(f"sha256:{task_id.removeprefix('sha256-')}")
        url, headers = await self._login(image, digest)
        try:
            await self._control.open(OpenTask(self._rest.peer_id, url, digest, headers), self._timeout)
        except LinkError as exc:
            denied = exc.code == "PULL_DENIED"
            why = f"this node's registry login does not pull {image}" if denied else "the open failed"
            raise DownloadFailed(f"{why}: {exc}", exc.upstream_status, denied=denied) from None
        except SupernodeUnavailable as exc:
            raise TorrentUnavailable(str(exc)) from None

    def _ended(self, task_id: str, fetch: asyncio.Task[StoredBlob]) -> None:
        if self._fetches.get(task_id) is fetch:
            del self._fetches[task_id]
        if fetch.cancelled():
            return
        error = fetch.exception()
        if isinstance(error, TorrentUnavailable | DownloadFailed):
            self._failed[task_id] = (self._clock.monotonic(), str(error))
            log.warning("preheat: %s failed: %s", task_id, error)
        elif error is not None:
            self._failed[task_id] = (self._clock.monotonic(), f"internal error: {type(error).__name__}")
            log.error("preheat: fetching %s crashed", task_id, exc_info=error)
        else:
            log.info("preheat: %s held, verified", task_id)
        self._woken.set()

    def _progress(self) -> list[LayerProgress]:
        out = []
        for task_id, assigned in self._assigned.items():
            blob = self._store.get(task_id)
            if blob is not None and blob.complete:
                out.append(LayerProgress(task_id, "complete", assigned.size))
            elif task_id in self._failed:
                out.append(LayerProgress(task_id, "failed", 0, self._failed[task_id][1]))
            elif task_id in self._fetches:
                out.append(LayerProgress(task_id, "running", self._torrents.progress(task_id) or 0))
            else:
                out.append(LayerProgress(task_id, "pending"))
        return out
