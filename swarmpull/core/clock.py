"""Time is passed in, never read by decision code: components take a ``Clock``.

``FakeClock`` ships beside it, as aiohttp ships test_utils: time moves only when told to."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...


class SystemClock:
    """The real monotonic clock."""

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A ``Clock`` for tests: ``advance()`` moves time; nothing else does."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self.now += seconds
