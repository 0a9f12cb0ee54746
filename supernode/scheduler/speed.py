"""Which sources are degraded: transfers far slower than everybody else's.

Requesters report how long each finished transfer took; the scheduler divides that by
the uploads the source was serving when the transfer began (a source with eight uploads
gives each an eighth of its bandwidth: that is load, not sickness). Per source and per
requester we keep an exponentially weighted mean of those seconds per MiB, and take as
the source's the ``witnesses``-th slowest of its requesters' means: one requester (a
liar: one report of a byte in a month) can make a source look no slower than the next
requester measured it. A source is degraded when that is above the mean of the other
sources plus three standard deviations (leave-one-out, so one slow source cannot hide
inside a spread it inflates itself) and at least twice the others' mean (so a tight,
healthy swarm does not flag noise). It stays degraded for a while, then starts afresh:
new reports decide again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MIB = 1024 * 1024


MAX_REQUESTERS = 8  # per source, the requesters whose means are kept (the latest)


@dataclass(slots=True)
class _Source:
    means: dict[str, float] = field(default_factory=dict)  # requester -> EWMA of seconds per MiB
    samples: int = 0
    mean: float = 0.0  # the ``witnesses``-th slowest of ``means`` (0: too few requesters)

    def counted(self, min_samples: int) -> bool:
        return self.samples >= min_samples and self.mean > 0


class SpeedTracker:
    def __init__(
        self,
        alpha: float = 0.2,
        min_samples: int = 5,
        min_sources: int = 4,
        sigmas: float = 3.0,
        min_ratio: float = 2.0,
        witnesses: int = 2,
    ) -> None:
        if witnesses < 1:
            raise ValueError("a source's speed needs at least one witness")
        self._alpha = alpha
        self._min_samples = min_samples
        self._min_sources = min_sources
        self._sigmas = sigmas
        self._min_ratio = min_ratio
        self._witnesses = witnesses
        self._sources: dict[str, _Source] = {}
        # Sums over the sources with enough samples, so each check is O(1).
        self._n = 0
        self._sum = 0.0
        self._sumsq = 0.0

    def report(self, source: str, requester: str, size: int, seconds: float) -> None:
        """``requester`` received ``size`` bytes from ``source`` in ``seconds``."""
        if size <= 0 or seconds < 0:
            return
        state = self._sources.setdefault(source, _Source())
        value = seconds / (size / MIB)
        self._forget_sums(state)
        old = state.means.pop(requester, None)  # re-inserted: the latest requesters stay
        state.means[requester] = value if old is None else old + self._alpha * (value - old)
        if len(state.means) > MAX_REQUESTERS:
            del state.means[next(iter(state.means))]
        state.samples += 1
        if len(state.means) >= self._witnesses:
            state.mean = sorted(state.means.values())[-self._witnesses]
        self._add_sums(state)

    def degraded(self, source: str) -> bool:
        state = self._sources.get(source)
        if state is None or not state.counted(self._min_samples):
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
        if state.counted(self._min_samples):
            self._n += 1
            self._sum += state.mean
            self._sumsq += state.mean**2

    def _forget_sums(self, state: _Source) -> None:
        if state.counted(self._min_samples):
            self._n -= 1
            self._sum -= state.mean
            self._sumsq -= state.mean**2
