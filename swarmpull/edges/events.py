"""The ``--events`` file: swarm events as JSON lines, written off the event loop.

One ``EventLog`` per file, and one file per ``EventLog``: it holds an exclusive lock on the
file (``flock``) while open, so a second writer, in this process or another, is refused at
start instead of interleaving half lines. ``emit`` only appends to a bounded buffer; a
task on the event loop hands the buffer to a thread every ``flush_interval`` (or sooner
when it fills up), which encodes and writes it. A slow or full disk never blocks the
daemon: past ``capacity`` buffered events, new ones are dropped and counted, and the count
is written as an ``events_dropped`` event once there is room. Memory stays bounded
by twice ``capacity`` events (one batch being written, one filling).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from swarmpull.core.events import SCHEMA

log = logging.getLogger(__name__)


class EventLogBusy(OSError):
    """Another writer holds the events file."""


class EventLog:
    """Construct, ``await start()``, ``emit()``; ``await stop()`` writes what is left
    (safe twice)."""

    enabled = True

    def __init__(
        self,
        path: Path,
        *,
        capacity: int = 50_000,
        flush_interval: float = 0.5,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if capacity < 1 or flush_interval <= 0:
            raise ValueError("capacity must be at least 1 and flush_interval positive")
        self.path = path
        self.capacity = capacity
        self.flush_interval = flush_interval
        self._now = wall_clock
        self._pending: list[dict[str, Any]] = []
        self._fd: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self.dropped = 0  # events not written: the buffer was full, or the disk refused them
        self._dropped_told = 0
        self.written = 0

    def __repr__(self) -> str:
        return f"<EventLog {self.path} pending={len(self._pending)} dropped={self.dropped}>"

    def open(self) -> None:
        """Open the file for appending and take its lock; EventLogBusy if another writer
        has it, OSError if it cannot be opened."""
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise EventLogBusy(f"another process writes events to {self.path}") from None
        self._fd = fd
        self.emit("log_opened", schema=SCHEMA, pid=os.getpid())

    async def start(self) -> None:
        self.open()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="events-writer")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._fd is not None:
            self._count(await asyncio.to_thread(self._write, self._take()))
            os.close(self._fd)  # releases the lock
            self._fd = None

    def emit(self, kind: str, /, **fields: Any) -> None:
        if len(self._pending) >= self.capacity:
            self.dropped += 1
            return
        self._pending.append({"t": round(self._now(), 6), "event": kind, **fields})
        if len(self._pending) >= self.capacity // 2 and self._wake is not None:
            self._wake.set()

    async def _run(self) -> None:
        if self._wake is None:
            raise RuntimeError("the event log runs only once started")
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_interval):
                    await self._wake.wait()
            self._wake.clear()
            batch = self._take()
            if batch:
                self._count(await asyncio.to_thread(self._write, batch))

    def _count(self, outcome: tuple[int, int]) -> None:
        written, lost = outcome
        self.written += written
        self.dropped += lost

    def _take(self) -> list[dict[str, Any]]:
        batch, self._pending = self._pending, []
        if self.dropped > self._dropped_told:
            batch.append({"t": round(self._now(), 6), "event": "events_dropped", "count": self.dropped})
            self._dropped_told = self.dropped
        return batch

    def _write(self, batch: list[dict[str, Any]]) -> tuple[int, int]:
        """In a thread: encode and append the batch; (events written, events lost)."""
        if not batch or self._fd is None:
            return 0, len(batch)
        data = "".join(json.dumps(e, separators=(",", ":"), default=str) + "\n" for e in batch).encode()
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            # The disk refused the rest (full, gone): those events are lost, and the last
            # line may be cut short (readers skip a line that is not JSON).
            lost = data[len(data) - len(view) :].count(b"\n")
            log.warning("%d events to %s lost: %s", lost, self.path, exc.strerror or exc)
            return len(batch) - lost, lost
        return len(batch), 0
