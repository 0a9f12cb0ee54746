"""Which sources are degraded: transfers far slower than everybody else's.

Requesters report how long each finished transfer took; the scheduler divides that by
the uploads the source was serving when the transfer began (a source with eight uploads
gives each an eighth of its bandwidth: that is load, not sickness). Per source we keep an
exponentially weighted mean of those seconds per MiB. A source is degraded when its mean is
above the mean of the other sources plus three standard deviations (leave-one-out, so
one slow source cannot hide inside a spread it inflates itself) and at least twice the
others' mean (so a tight, healthy swarm does not flag noise). It stays degraded for a
while, then starts afresh: new reports decide again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(slots=True)
class _Source:
    mean: float = 0.0  # EWMA of seconds per MiB
    samples: int = 0


class SpeedTracker:
    def __init__(
        self,
        alpha: float = 0.2,
        min_samples: int = 5,
        min_sources: int = 4,
        sigmas: float = 3.0,
        min_ratio: float = 2.0,
    ) -> None:
        self._alpha = alpha
        self._min_samples = min_samples
        self._min_sources = min_sources
        self._sigmas = sigmas
        self._min_ratio = min_ratio
        self._sources: dict[str, _Source] = {}
        # Sums over the sources with enough samples, so each check is O(1).
        self._n = 0
        self._sum = 0.0
        self._sumsq = 0.0

    def report(self, source: str, size: int, seconds: float) -> None:
        if size <= 0 or seconds < 0:
            return
        state = self._sources.setdefault(source, _Source())
        value = seconds / (size / MIB)
        self._forget_sums(state)
        state.mean = value if state.samples == 0 else state.mean + self._alpha * (value - state.mean)
        state.samples += 1
        self._add_sums(state)

    def degraded(self, source: str) -> bool:
        state = self._sources.get(source)
        if state is None or state.samples < self._min_samples:
            return False
        n = self._n - 1  # the others
        if n < self._min_sources:
            return False
        total, squares = self._sum - state.mean, self._sumsq - state.mean**2
        mean = total / n
        std = math.sqrt(max(squares / n - mean * mean, 0.0))
        return state.mean > mean + self._sigmas * std and state.mean > mean * self._min_ratio

    def reset(self, source: str) -> None:
        """Forget a source's history (it left, or its degraded spell is over)."""
        state = self._sources.pop(source, None)
        if state is not None:
            self._forget_sums(state)

    def _add_sums(self, state: _Source) -> None:
        if state.samples >= self._min_samples:
            self._n += 1
            self._sum += state.mean
            self._sumsq += state.mean**2

    def _forget_sums(self, state: _Source) -> None:
        if state.samples >= self._min_samples:
            self._n -= 1
            self._sum -= state.mean
            self._sumsq -= state.mean**2
