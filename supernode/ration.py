"""The seed's ration: each piece leaves the seed a few times, then only where peers lack it.

A node asks the seed for every piece none of its parents holds, and at the start of a
surge its parents hold as little as it does: without a ration the seed, one machine,
would send most of the image to most of the nodes and set the surge's pace. With it,
each piece goes out ``copies`` times; after that the seed serves it only while fewer
than ``copies`` live peers are known to hold it (holders leave, reports lag), and
otherwise answers "not held here". The requester then takes it from a peer, or, with no
parent holding it, asks the supernode for parents and gets ones that do (super-seeding,
as BitTorrent's seeds do). Holder counts come from the scheduler, one writer; this
object only counts what the seed sent.
"""

from __future__ import annotations

from collections.abc import Callable


class SeedRation:
    def __init__(self, copies: int, holders: Callable[[str, int], int]) -> None:
        if copies < 1:
            raise ValueError("the seed must send each piece at least once")
        self.copies = copies
        self._holders = holders
        self._sent: dict[str, dict[int, int]] = {}

    def allow(self, task_id: str, piece: int) -> bool:
        """Whether the seed sends ``piece`` now (and counts it if so)."""
        sent = self._sent.setdefault(task_id, {})
        count = sent.get(piece, 0)
        if count >= self.copies and self._holders(task_id, piece) >= self.copies:
            return False
        sent[piece] = count + 1
        return True

    def forget(self, task_id: str) -> None:
        """The seed dropped the blob: a copy it holds again is counted afresh."""
        self._sent.pop(task_id, None)
