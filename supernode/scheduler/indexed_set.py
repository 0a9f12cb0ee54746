"""A set with O(1) add, remove and random sampling: the sources of a task."""

from __future__ import annotations

import random
from collections.abc import Iterator


class IndexedSet:
    __slots__ = ("_index", "_items")

    def __init__(self) -> None:
        self._items: list[str] = []
        self._index: dict[str, int] = {}

    def add(self, item: str) -> None:
        if item not in self._index:
            self._index[item] = len(self._items)
            self._items.append(item)

    def discard(self, item: str) -> None:
        pos = self._index.pop(item, None)
        if pos is None:
            return
        last = self._items.pop()
        if pos < len(self._items):
            self._items[pos] = last
            self._index[last] = pos

    def sample(self, rng: random.Random, k: int) -> list[str]:
        """All items when there are at most ``k``, else ``k`` distinct ones at random."""
        n = len(self._items)
        if n <= k:
            return list(self._items)
        if k * 4 < n:  # few of many: draw with retries instead of a partial shuffle
            picked: dict[str, None] = {}
            while len(picked) < k:
                picked[self._items[int(rng.random() * n)]] = None
            return list(picked)
        return rng.sample(self._items, k)

    def __contains__(self, item: object) -> bool:
        return item in self._index

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._items))
