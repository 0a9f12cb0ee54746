"""Test helpers for the shared core: a clock that only moves when told to."""

from __future__ import annotations


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
