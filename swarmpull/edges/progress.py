"""A one-line progress bar for terminals (stderr), redrawn at most ten times a second."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from swarmpull.core.units import format_size


class ProgressBar:
    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self._label = label
        self._stream = stream or sys.stderr
        self._enabled = self._stream.isatty()
        self._start = time.monotonic()
        self._drawn = 0.0
        self.total: int | None = None
        self.done = 0

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self._enabled and now - self._drawn >= 0.1:
            self._drawn = now
            self._draw(now)

    def finish(self) -> None:
        if self._enabled:
            self._draw(time.monotonic())
            self._stream.write("\n")
            self._stream.flush()

    def _draw(self, now: float) -> None:
        rate = self.done / max(now - self._start, 1e-6)
        if self.total:
            share = min(self.done / self.total, 1.0)
            bar = "#" * int(share * 30)
            text = (
                f"\r{self._label} [{bar:<30}] {share:4.0%} "
                f"{format_size(self.done)}/{format_size(self.total)} {format_size(rate)}/s "
            )
        else:
            text = f"\r{self._label} {format_size(self.done)} {format_size(rate)}/s "
        self._stream.write(text)
        self._stream.flush()
