"""Rate arithmetic, sans-IO: a token bucket with time passed in, and transfer priority.

``TokenBucket``: tokens accrue at ``rate`` bytes per second up to ``burst``; a taker may
overdraw, and the debt delays the next taker, so the long-run rate is exact for any chunk
size. The async limiter around it is ``swarmpull.edges.ratelimit.RateLimiter``.
"""

from __future__ import annotations

import enum

MIN_BURST = 16 * 1024
MAX_BURST = 256 * 1024


class Priority(enum.IntEnum):
    """Transfers a client is waiting on go before background work (prefetch, preheat)."""

    FOREGROUND = 0
    BACKGROUND = 1


def default_burst(rate: float) -> float:
    return min(max(rate * 0.1, MIN_BURST), MAX_BURST)


class TokenBucket:
    """``rate`` bytes per second, at most ``burst`` saved up; overdraft allowed."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._stamp = now

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    def delay(self, now: float) -> float:
        """Seconds until a taker may go (0: now). A taker may go while tokens are positive."""
        self._refill(now)
        return 0.0 if self._tokens > 0 else -self._tokens / self.rate + 1e-9

    def take(self, count: int, now: float) -> None:
        self._refill(now)
        self._tokens -= count
