"""The node's download slots: how many piece transfers run at once, across all blobs.

Foreground downloads (a client is waiting) take free slots first; background ones
(prefetch, preheat) only get a slot when no foreground download is waiting for one. The
link's rate is shared the same way, oldest download first (``peer.share``).
"""

from __future__ import annotations

import asyncio

from peer.share import LinkShare
from swarmpull.core.rates import Priority


class DownloadSlots:
    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError("at least one download slot is needed")
        self.total = total
        self.used = 0
        self._waiting = [0, 0]  # per priority
        self._changed = asyncio.Event()
        self.share = LinkShare()  # and the link's rate, oldest download first

    def __repr__(self) -> str:
        return f"<DownloadSlots {self.used}/{self.total}>"

    def free(self, priority: Priority) -> int:
        """Slots a download of this priority may take now."""
        if priority is Priority.BACKGROUND and self._waiting[Priority.FOREGROUND]:
            return 0
        return self.total - self.used

    def take(self) -> None:
        self.used += 1

    def release(self) -> None:
        self.used -= 1
        self._changed.set()

    async def wait_free(self, priority: Priority) -> None:
        """Return once ``free(priority)`` is positive."""
        self._waiting[priority] += 1
        try:
            while self.free(priority) <= 0:
                self._changed.clear()
                await self._changed.wait()
        finally:
            self._waiting[priority] -= 1
            self._changed.set()  # a background waiter may go now
