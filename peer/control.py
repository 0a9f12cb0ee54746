"""The peer's control channel to the supernode: registration, opens and reports, batched.

The one writer of "are we registered". A node pulling an image opens its layers at once
and reports on all of them together, so the supernode answers one call per node, not
one per node and layer:

- ``open()`` waits a few milliseconds for other opens and sends them as one call.
- Each download registers a ``Reporter``; the channel reports on every download whose
  report is due (the supernode says when), or nearly due, in one call, at once for a download that asks
  (it needs parents, or it completed), and sends an empty report (a heartbeat) when no
  report is due for a heartbeat interval. Blobs that left the store ride along.

On ``UNKNOWN_PEER`` it registers again; while no supernode answers, calls raise
``SupernodeUnavailable`` and the downloads decide (they fall back to the upstream).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from peer.capabilities import CapabilityBook
from peer.link import LinkError, SupernodeLink, SupernodeUnavailable
from swarmpull.core.bitfield import to_text
from swarmpull.core.clock import Clock
from swarmpull.core.protocol import (
    Holding,
    OpenTask,
    PeerRegistration,
    PeerReport,
    ReportAnswer,
    TaskInfo,
    TaskReport,
)
from swarmpull.edges.store import PieceStore

log = logging.getLogger(__name__)

OPEN_BATCH_WINDOW = 0.005  # seconds an open waits for others to go with it
REPORT_BATCH_WINDOW = 0.02  # seconds an urgent report waits for others


@dataclass(slots=True)
class Reporter:
    """A download's side of the reports: what to say, what to do with the answer."""

    build: Callable[[], TaskReport]
    answer: Callable[[ReportAnswer | LinkError], None]
    due: float = 0.0
    every: float = 0.0  # the interval the supernode last asked for


class Control:
    def __init__(
        self,
        link: SupernodeLink,
        store: PieceStore,
        registration: PeerRegistration,
        clock: Clock,
        capabilities: CapabilityBook | None = None,
    ):
        self._link = link
        # Every answer's capability and keys (the piece client and server use them).
        self.capabilities = capabilities if capabilities is not None else CapabilityBook()
        self._store = store
        self._registration = registration
        self._clock = clock
        self._registered = False
        self._lock = asyncio.Lock()
        self._dropped: list[str] = []
        self._opens: list[tuple[OpenTask, asyncio.Future[TaskInfo]]] = []
        self._open_flush: asyncio.Task[None] | None = None
        self._reporters: dict[str, Reporter] = {}
        self._wake = asyncio.Event()
        self.interval = 5.0  # heartbeat interval the supernode asks for
        self.calls = 0

    # ------------------------------------------------------------ registration

    @property
    def registered(self) -> bool:
        return self._registered

    def lost(self) -> None:
        self._registered = False

    async def ensure_registered(self) -> None:
        """Register now unless registered; raises SupernodeUnavailable."""
        if self._registered:
            return
        async with self._lock:
            if self._registered:
                return
            reg = PeerRegistration(
                self._registration.peer_id,
                self._registration.address,
                self._registration.upload_slots,
                self._registration.zone,
                self._registration.rack,
                self._holdings(),
                self._registration.upload_rate,
            )
            self.calls += 1
            self.interval = await self._link.register(reg)
            self._dropped.clear()  # a fresh registration only announces what we hold
            self._registered = True
            log.info("registered with the supernode (%d holdings)", len(reg.holdings))

    def dropped(self, task_id: str) -> None:
        """A blob left the store: tell the supernode with the next report."""
        self._dropped.append(task_id)
        self._wake.set()

    # ------------------------------------------------------------------- opens

    async def open(self, req: OpenTask, timeout: float) -> TaskInfo:
        """Open a task, in one call with the opens that come within a few milliseconds.
        Raises LinkError (for this task) or SupernodeUnavailable."""
        future: asyncio.Future[TaskInfo] = asyncio.get_running_loop().create_future()
        self._opens.append((req, future))
        if self._open_flush is None or self._open_flush.done():
            self._open_flush = asyncio.create_task(self._send_opens(timeout), name="open-batch")
        return await future

    async def _send_opens(self, timeout: float) -> None:
        """Send what waits, in batches, until nothing does (an open that comes while a
        batch is on its way goes with the next one)."""
        while self._opens:
            await asyncio.sleep(OPEN_BATCH_WINDOW)
            batch, self._opens = self._opens, []
            await self._send_batch(batch, timeout)

    async def _send_batch(
        self, batch: list[tuple[OpenTask, asyncio.Future[TaskInfo]]], timeout: float
    ) -> None:
        results: list[TaskInfo | LinkError] = []
        try:
            for _ in range(2):
                await self.ensure_registered()
                self.calls += 1
                results = await self._link.open_tasks([req for req, _ in batch], timeout)
                if any(isinstance(r, LinkError) and r.code == "UNKNOWN_PEER" for r in results):
                    self.lost()
                    continue
                break
        except LinkError as exc:
            if exc.code == "UNKNOWN_PEER":
                self.lost()
            results = [exc] * len(batch)
        except Exception as exc:  # every waiter hears of it
            error = exc if isinstance(exc, SupernodeUnavailable) else SupernodeUnavailable(str(exc))
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, LinkError):
                future.set_exception(result)
            else:
                self.capabilities.learn(result.task_id, result.keys, result.capability)
                future.set_result(result)

    # ----------------------------------------------------------------- reports

    def watch(self, task_id: str, reporter: Reporter, first_in: float) -> None:
        """Report on this download from now on, first in ``first_in`` seconds (the open's
        answer gave its parents and said when to report)."""
        reporter.due = self._clock.monotonic() + first_in
        reporter.every = first_in
        self._reporters[task_id] = reporter
        self._wake.set()

    def unwatch(self, task_id: str) -> None:
        self._reporters.pop(task_id, None)

    def report_soon(self, task_id: str) -> None:
        """This download needs to report now (it needs parents, or it is complete)."""
        reporter = self._reporters.get(task_id)
        if reporter is not None:
            reporter.due = 0.0
            self._wake.set()

    async def run(self) -> None:
        """Report what is due, heartbeat when nothing is; re-register when forgotten."""
        backoff = 1.0
        last_sent = self._clock.monotonic()
        while True:
            now = self._clock.monotonic()
            due = self._due(now)
            # An open control channel is a heartbeat in itself.
            connected = self._link.connected()
            heartbeat = now - last_sent >= self.interval and not connected
            if not due and not heartbeat and not self._dropped and self._registered:
                next_due = min((r.due for r in self._reporters.values()), default=now + self.interval)
                if not connected:
                    next_due = min(next_due, last_sent + self.interval)
                wait = max(REPORT_BATCH_WINDOW, next_due - now)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                await asyncio.sleep(REPORT_BATCH_WINDOW)  # let others that are due come along
                continue
            try:
                await self.ensure_registered()
                await self._send(due)
                last_sent = self._clock.monotonic()
                backoff = 1.0
            except (SupernodeUnavailable, Exception) as exc:
                self._registered = False
                if isinstance(exc, SupernodeUnavailable):
                    log.warning("%s; retrying in %.0fs", exc, backoff)
                else:  # a bug must not end the reports for good
                    log.exception("reporting to the supernode failed")
                for task_id in due:
                    reporter = self._reporters.get(task_id)
                    if reporter is not None:
                        reporter.answer(LinkError(503, "UNAVAILABLE", str(exc)))
                        reporter.due = self._clock.monotonic() + backoff
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    def _due(self, now: float) -> list[str]:
        """The downloads to report on now: those due, and with them those that would be
        due within half their interval (a call goes anyway: the node's layers report
        together, one call per node, not one per layer)."""
        reporters = self._reporters.items()
        if not any(r.due <= now for _, r in reporters):
            return []
        return [t for t, r in reporters if r.due - r.every / 2 <= now]

    async def _send(self, due: list[str]) -> None:
        reports = []
        for task_id in due:
            reporter = self._reporters.get(task_id)
            if reporter is not None:
                reporter.due = self._clock.monotonic() + 3600.0  # until its answer says when
                report = reporter.build()
                due_capability = self.capabilities.due(task_id, time.time())
                reports.append(replace(report, capability=due_capability) if due_capability else report)
        dropped, self._dropped = self._dropped, []
        try:
            self.calls += 1
            answers, self.interval = await self._link.report(PeerReport(reports, dropped))
        except LinkError as exc:
            self._dropped[:0] = dropped
            if exc.code == "UNKNOWN_PEER":
                self.lost()
            for report in reports:
                self.report_soon(report.task_id)
            return
        except BaseException:
            self._dropped[:0] = dropped
            raise
        for task_id, answer in answers.items():
            reporter = self._reporters.get(task_id)
            if reporter is None:
                continue
            if not isinstance(answer, LinkError):
                self.capabilities.learn(task_id, answer.keys, answer.capability)
                reporter.every = answer.report_in
                reporter.due = self._clock.monotonic() + answer.report_in
            reporter.answer(answer)

    async def leave(self) -> None:
        if self._open_flush is not None:
            self._open_flush.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._open_flush
        if self._registered:
            self._registered = False
            with contextlib.suppress(LinkError, SupernodeUnavailable):
                await self._link.leave()
        await self._link.close()

    def _holdings(self) -> list[Holding]:
        """What we can serve. Only blobs keyed by content digest: their pieces are the
        same whoever cut them with the same geometry, so the supernode can vouch for them."""
        return [
            Holding(b.task_id, b.meta.size, b.meta.piece_size, to_text(b.have, b.geometry.count))
            for b in self._store.blobs()
            if b.task_id.startswith("sha256-") and b.verified_count
        ]
