"""How many new tasks one peer may have a replica create (sans-IO).

Each new task is an upstream read, a blob in the seed's store (two descriptors) and a
task in the scheduler. A node pulling images creates a handful at a time, its layers,
and in a surge the other nodes open tasks that exist already; a node naming fresh URLs
by the hundred makes the supernode read whatever they point at and pushes honest blobs
out of its store. So each peer has a bucket: ``burst`` new tasks at once, then ``rate``
a second. Opens of tasks that exist cost nothing.
"""

from __future__ import annotations

import math

BURST = 64
RATE = 1.0  # new tasks a second, once the burst is spent
MAX_PEERS = 100_000  # buckets kept; the least recently used go first (they refilled)


class TooManyTasks(Exception):
    """The peer created new tasks faster than its budget; ``retry_after`` seconds."""

    def __init__(self, peer_id: str, retry_after: float) -> None:
        super().__init__(
            f"peer {peer_id} opened too many new blobs at once: try again in {retry_after:.0f} s"
        )
        self.retry_after = retry_after


class NewTaskBudget:
    def __init__(self, burst: int = BURST, rate: float = RATE) -> None:
        self._burst, self._rate = float(burst), rate
        self._buckets: dict[str, tuple[float, float]] = {}  # peer -> (tokens, when)

    def __repr__(self) -> str:
        return f"<NewTaskBudget {len(self._buckets)} peers>"

    def take(self, peer_id: str, now: float) -> None:
        """One new task for ``peer_id`` at ``now``; TooManyTasks when its bucket is empty."""
        tokens, at = self._buckets.pop(peer_id, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        if tokens < 1.0:
            self._buckets[peer_id] = (tokens, now)
            raise TooManyTasks(peer_id, math.ceil((1.0 - tokens) / self._rate))
        self._buckets[peer_id] = (tokens - 1.0, now)  # the most recently used last
        while len(self._buckets) > MAX_PEERS:
            del self._buckets[next(iter(self._buckets))]
