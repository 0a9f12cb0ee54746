"""The dashboard's heartbeat: once a tick, survey this replica, swap views with the
others through the cluster state, merge, and hand the result to every open page.

The work is done once a tick whoever watches: a page costs the write of a message
already encoded. Each page gets only the latest message (a slow browser skips ticks, it
never queues them), so a page costs the supernode the same at 1 page or 60. Node rows
are surveyed only while a page is open at some replica (the cluster state says so),
since they grow with the swarm.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from supernode.cluster import ClusterState, ClusterUnavailable
from supernode.dashboard.merge import History, merge
from supernode.dashboard.survey import Survey
from swarmpull.core.clock import Clock

log = logging.getLogger(__name__)

MAX_PAGES = 64  # open streams per replica


class Page:
    """One open stream: the latest message it has not sent yet."""

    __slots__ = ("closed", "message", "ready")

    def __init__(self) -> None:
        self.message: bytes | None = None
        self.ready = asyncio.Event()
        self.closed = False

    def offer(self, message: bytes) -> None:
        self.message = message  # an unsent older one is replaced, not queued
        self.ready.set()

    def close(self) -> None:
        self.closed = True
        self.ready.set()

    async def next(self) -> bytes | None:
        """The next message; None once the feed stopped (the stream should end)."""
        await self.ready.wait()
        self.ready.clear()
        message, self.message = self.message, None
        return None if self.closed else message or b""


class DashboardFeed:
    """Construct, ``await start()``; ``open_page()``/``close_page()``; ``await stop()``."""

    def __init__(self, survey: Survey, cluster: ClusterState, clock: Clock, interval: float = 1.0) -> None:
        self._survey = survey
        self._cluster = cluster
        self._clock = clock
        self.interval = interval
        self.history = History()
        self.latest: dict[str, Any] | None = None
        self.pages: set[Page] = set()
        self._watched_elsewhere = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="dashboard-feed")

    async def stop(self) -> None:
        for page in self.pages:  # open streams end now, not when the server gives up on them
            page.close()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def open_page(self) -> Page | None:
        """A new stream, or None when too many are open."""
        if len(self.pages) >= MAX_PAGES:
            return None
        page = Page()
        self.pages.add(page)
        return page

    def close_page(self, page: Page) -> None:
        self.pages.discard(page)

    def welcome(self) -> bytes:
        """What a page gets first: the history so far and the latest view."""
        message = event("history", list(self.history.points))
        if self.latest is not None:
            message += event("state", self.latest)
        return message

    async def _run(self) -> None:
        while True:
            started = self._clock.monotonic()
            try:
                await self.tick()
            except Exception:  # a bug here must not end the dashboard for good
                log.exception("dashboard tick failed")
            await asyncio.sleep(max(0.0, self.interval - (self._clock.monotonic() - started)))

    async def tick(self) -> None:
        watching = bool(self.pages)
        mine = self._survey.take(time.time(), self._clock.monotonic(), watching or self._watched_elsewhere)
        partial = False
        try:
            raw, self._watched_elsewhere = await self._cluster.exchange_views(
                json.dumps(mine, separators=(",", ":")).encode(), watching, ttl=3 * self.interval
            )
            others = [v for v in map(_parse, raw) if v is not None and v.get("replica") != mine["replica"]]
            views = [mine, *others]
        except ClusterUnavailable:
            views, partial = [mine], True  # this replica's part is better than nothing
        view = merge(views)
        view["partial"] = partial
        point = self.history.add(view)
        self.latest = view
        if self.pages:
            message = event("state", view) + event("point", point)
            for page in self.pages:
                page.offer(message)


def event(name: str, data: Any) -> bytes:
    """One server-sent event (the JSON on one line: json.dumps writes no newline)."""
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None
