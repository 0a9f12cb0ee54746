"""Virtual time for async tests: sleepers wake in time order on a ``FakeClock``."""

from __future__ import annotations

import asyncio
import heapq
import itertools

from swarmpull.core.clock import FakeClock


class VirtualTime:
    """Virtual time for async code that takes a clock and a ``sleep``: sleepers wake in
    time order and the clock jumps to each wake-up, so tests of rates and timeouts run in
    no real time and give the same numbers every run."""

    def __init__(self, start: float = 1000.0) -> None:
        self.clock = FakeClock(start)
        self._sleepers: list[tuple[float, int, object]] = []
        self._seq = itertools.count()

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.clock.now + max(seconds, 0.0), next(self._seq), future))
        await future

    async def run(self, *coroutines):  # type: ignore[no-untyped-def]
        """Run ``coroutines`` to the end in virtual time; returns their results."""
        tasks = [asyncio.ensure_future(c) for c in coroutines]
        while not all(t.done() for t in tasks):
            for _ in range(20):  # let everything that can run, run
                await asyncio.sleep(0)
            if all(t.done() for t in tasks):
                break
            if not self._sleepers:
                for task in tasks:
                    task.cancel()
                raise RuntimeError("deadlock: tasks wait and nobody sleeps")
            when, _, future = heapq.heappop(self._sleepers)
            self.clock.now = max(self.clock.now, when)
            if not future.done():  # type: ignore[attr-defined]
                future.set_result(None)  # type: ignore[attr-defined]
        return [t.result() for t in tasks]
