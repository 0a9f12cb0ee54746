"""Rate limits that hold over short windows, whatever the number of concurrent transfers.

``swarmpull.core.rates.TokenBucket`` is the arithmetic; ``RateLimiter`` is the async
shell: callers ``acquire(n)`` per chunk (64 KiB) before moving bytes on the wire, queue
in FIFO order, foreground before background, and only the head of the queue ever sleeps.
The burst is small (a tenth of a second of traffic, 16 KiB..256 KiB), so a piece never
goes out at line rate.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from swarmpull.core.clock import Clock, SystemClock
from swarmpull.core.rates import Priority, TokenBucket, default_burst


class _Waiter:
    __slots__ = ("count", "turn")

    def __init__(self, count: int) -> None:
        self.count = count
        self.turn = asyncio.Event()


class RateLimiter:
    """An async limiter around a ``TokenBucket``; ``rate`` None means unlimited."""

    def __init__(
        self,
        rate: float | None,
        clock: Clock | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        burst: float | None = None,
        on_wait: Callable[[float], None] | None = None,
    ) -> None:
        self.rate = rate
        self._clock = clock or SystemClock()
        self._sleep = sleep
        self._on_wait = on_wait
        self._bucket = None
        if rate is not None:
            self._bucket = TokenBucket(rate, burst or default_burst(rate), self._clock.monotonic())
        self._queues: tuple[deque[_Waiter], deque[_Waiter]] = (deque(), deque())

    def __repr__(self) -> str:
        waiting = sum(len(q) for q in self._queues)
        return f"<RateLimiter {self.rate or 'unlimited'} B/s waiting={waiting}>"

    async def acquire(self, count: int, priority: Priority = Priority.FOREGROUND) -> None:
        """Wait until ``count`` bytes may move."""
        bucket = self._bucket
        if bucket is None:
            return
        now = self._clock.monotonic()
        if not self._queues[0] and not self._queues[1] and bucket.delay(now) == 0:
            bucket.take(count, now)
            return
        waiter = _Waiter(count)
        queue = self._queues[priority]
        queue.append(waiter)
        started = now
        try:
            while True:
                if self._head() is waiter:
                    now = self._clock.monotonic()
                    delay = bucket.delay(now)
                    if delay == 0:
                        bucket.take(count, now)  # before the next waiter looks
                        break
                    await self._sleep(delay)
                else:
                    waiter.turn.clear()
                    await waiter.turn.wait()
        finally:
            was_head = self._head() is waiter
            queue.remove(waiter)
            if was_head:
                head = self._head()
                if head is not None:
                    head.turn.set()
        if self._on_wait is not None:
            self._on_wait(now - started)

    def _head(self) -> _Waiter | None:
        for queue in self._queues:
            if queue:
                return queue[0]
        return None
