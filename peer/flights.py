"""A blob's piece transfers under way on a peer, and what they came to.

``Flights`` starts a transfer per assignment (within the node's download slots), and
sorts the outcomes into what the next sync reports: pieces finished, failures with their
reason, and how long each finished transfer took (the supernode spots slow sources with
it). The first verified copy of a piece cancels its endgame twin.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from peer.metrics import PeerMetrics
from peer.slots import DownloadSlots
from swarmpull.core.clock import Clock
from swarmpull.core.failures import FailureReason
from swarmpull.core.protocol import PieceAssignment, PieceFailure, PieceTiming
from swarmpull.core.rates import Priority
from swarmpull.edges.store import PieceCorrupt, StoredBlob, WriteCancelled
from swarmpull.edges.transport import PieceFetchError, PieceTransport

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Outcomes:
    """What to tell the supernode at the next sync."""

    finished: list[int] = field(default_factory=list)
    failed: list[PieceFailure] = field(default_factory=list)
    timings: list[PieceTiming] = field(default_factory=list)


class Flights:
    def __init__(
        self,
        blob: StoredBlob,
        transport: PieceTransport,
        slots: DownloadSlots,
        metrics: PeerMetrics,
        clock: Clock,
        priority: Priority,
        on_verified: Callable[[], None],
        download_limit: int | None = None,
        pace: float = 0.5,
    ) -> None:
        self.blob = blob
        self._transport = transport
        self._slots = slots
        self._metrics = metrics
        self._clock = clock
        self._priority = priority
        self._on_verified = on_verified
        piece_size = blob.meta.piece_size
        self._cap = slots.total if download_limit is None else max(1, int(download_limit * pace / piece_size))
        self._tasks: dict[asyncio.Task[PieceFailure | None], PieceAssignment] = {}
        self.outcomes = Outcomes()

    def __len__(self) -> int:
        return len(self._tasks)

    def want(self) -> int:
        """Assignments to ask for: free download slots, and no more transfers than the
        download limit feeds at a piece per ``pace`` seconds each."""
        return max(0, min(self._slots.free(self._priority), self._cap - len(self._tasks)))

    def start(self, assignment: PieceAssignment) -> None:
        if self.blob.is_verified(assignment.piece):
            self.outcomes.finished.append(assignment.piece)
            return
        self._slots.take()
        task = asyncio.create_task(self._fetch(assignment))
        task.add_done_callback(lambda _: self._slots.release())
        self._tasks[task] = assignment

    def at_the_end(self) -> bool:
        """Every missing piece is in flight: the endgame, where a stalled transfer is
        worth a second source (so the supernode is polled more often)."""
        return self.blob.geometry.count - self.blob.verified_count <= len(self._tasks)

    def take_outcomes(self) -> Outcomes:
        outcomes, self.outcomes = self.outcomes, Outcomes()
        return outcomes

    def restore(self, outcomes: Outcomes) -> None:
        """A sync failed: report these again next time."""
        self.outcomes.finished[:0] = outcomes.finished
        self.outcomes.failed[:0] = outcomes.failed
        self.outcomes.timings[:0] = outcomes.timings

    async def collect(self, timeout: float) -> None:
        """Wait for transfers to end (at most ``timeout``) and sort their outcomes."""
        if not self._tasks:
            await asyncio.sleep(timeout)
            return
        done, _ = await asyncio.wait(self._tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            assignment = self._tasks.pop(task)
            if task.cancelled():  # an endgame twin that lost the race
                continue
            failure = task.result()
            if failure is not None:
                self.outcomes.failed.append(failure)
                continue
            self.outcomes.finished.append(assignment.piece)
            for other, twin in self._tasks.items():
                if twin.piece == assignment.piece:
                    other.cancel()

    async def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _fetch(self, assignment: PieceAssignment) -> PieceFailure | None:
        """Fetch and verify one piece; None on success, else the failure to report."""
        metrics = self._metrics
        try:
            writer = self.blob.writer(assignment.piece)
        except WriteCancelled:
            return None
        kind = "seed" if assignment.seed else "peer"
        started = self._clock.monotonic()
        try:
            wire = await self._transport.fetch(
                assignment.address, self.blob.task_id, assignment.piece, writer, self._priority
            )
            writer.commit(assignment.sha256)
        except PieceFetchError as exc:
            writer.abort()
            metrics.pieces.labels("failed").inc()
            log.debug("piece %d from %s: %s", assignment.piece, assignment.source, exc)
            return PieceFailure(assignment.piece, assignment.source, exc.reason)
        except PieceCorrupt as exc:
            writer.abort()
            metrics.pieces.labels("corrupt").inc()
            log.warning("corrupt piece from %s (%s): %s", assignment.source, assignment.address, exc)
            return PieceFailure(assignment.piece, assignment.source, FailureReason.CORRUPT)
        except WriteCancelled:
            return None
        except BaseException:
            writer.abort()
            raise
        seconds = self._clock.monotonic() - started
        self.outcomes.timings.append(PieceTiming(assignment.piece, assignment.source, writer.length, seconds))
        metrics.pieces.labels("verified").inc()
        metrics.download_bytes.labels(kind).inc(writer.length)
        metrics.transfers.download_wire_bytes.labels(kind).inc(wire)
        self._on_verified()
        return None
