"""The URLs that sent bytes not matching a blob's digest, kept from serving that blob again,
and the blobs whose read failed so (``poisoned``: their next read signs with a key of its own).

Sans-IO: every call takes ``now``. A task whose whole digest did not match fails for
``failed_task_ttl`` and is then tried afresh with whoever opens it next; without a memory
that outlives the task, the same lying URL would be read again at every retry (and its
pieces handed out again). The book remembers, per task (a digest-keyed task is one
digest), the URLs pinned with the bad bytes, for ``ttl`` seconds, and at most ``limit``
tasks (the least recently blamed forgotten first), so an attacker cannot grow it without
bound. URLs are compared without query string and user info (``redact_url``): a liar
cannot slip back in by changing a signature parameter.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from swarmpull.core.tasks import redact_url

MAX_URLS_PER_TASK = 16


@dataclass(frozen=True, slots=True)
class BlameConfig:
    """How long and how much the supernode remembers of lying upstreams."""

    ttl: float = 24 * 3600.0
    """Seconds a URL stays refused as a source of the blob it lied about."""
    limit: int = 4096
    """Tasks remembered at most; the least recently blamed are forgotten first."""

    def __post_init__(self) -> None:
        if self.ttl <= 0 or self.limit < 1:
            raise ValueError("BlameConfig: ttl must be positive and limit at least 1")


class BlameBook:
    """Per task, the URLs that produced bad bytes, until they expire."""

    def __init__(self, config: BlameConfig) -> None:
        self.config = config
        self._tasks: OrderedDict[str, dict[str, float]] = OrderedDict()  # task -> url -> until
        self._poisoned: OrderedDict[str, float] = OrderedDict()  # task -> until

    def __repr__(self) -> str:
        return f"<BlameBook {len(self._tasks)} tasks>"

    def blame(self, task_id: str, url: str, now: float) -> None:
        urls = self._tasks.pop(task_id, {})
        urls[redact_url(url)] = now + self.config.ttl
        while len(urls) > MAX_URLS_PER_TASK:
            urls.pop(min(urls, key=urls.__getitem__))
        self._tasks[task_id] = urls  # the most recently blamed last
        while len(self._tasks) > self.config.limit:
            self._tasks.popitem(last=False)

    def refused(self, task_id: str, url: str, now: float) -> bool:
        """``url`` sent bad bytes for this task before, and that is not forgotten yet."""
        urls = self._tasks.get(task_id)
        if not urls:
            return False
        until = urls.get(redact_url(url))
        if until is None:
            return False
        if until <= now:
            del urls[redact_url(url)]
            if not urls:
                del self._tasks[task_id]
            return False
        return True

    def poison(self, task_id: str, now: float) -> None:
        """The task's read did not match its digest (whoever is blamed for it)."""
        self._poisoned.pop(task_id, None)
        self._poisoned[task_id] = now + self.config.ttl
        while len(self._poisoned) > self.config.limit:
            self._poisoned.popitem(last=False)

    def poisoned(self, task_id: str, now: float) -> bool:
        until = self._poisoned.get(task_id)
        if until is not None and until <= now:
            del self._poisoned[task_id]
            return False
        return until is not None

    def __len__(self) -> int:
        return len(self._tasks)
