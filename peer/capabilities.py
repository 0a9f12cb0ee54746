"""This node's capabilities (sent with every ``/pieces`` request) and the keys its piece
server checks other nodes' capabilities with, both as the supernode's answers gave them.

A task's capabilities are signed with the task's statement keys; a node learns them when
it opens the task and from report answers (``Control`` records each answer here). For a
task it holds but has not opened since it started (a restart), it checks with every key
its supernodes named for any task: those of the replicas' own keys it has seen. Until
its first open after a start it knows none, and refuses every requester (403): they go
to other parents.
"""

from __future__ import annotations

import logging

from swarmpull.core.signing import SignatureError, TaskKeys, keys_from_json

log = logging.getLogger(__name__)

MAX_TASKS = 100_000


class CapabilityBook:
    """Per task: this node's latest capability, and the keys capabilities are signed with."""

    def __init__(self) -> None:
        self._mine: dict[str, str] = {}
        self._keys: dict[str, TaskKeys] = {}
        self._any = TaskKeys()  # every key any answer named: for tasks not opened since a start

    def __repr__(self) -> str:
        return f"<CapabilityBook {len(self._mine)} capabilities, {len(self._keys)} tasks' keys>"

    def learn(self, task_id: str, keys: list[str], capability: str | None) -> None:
        """An open or report answer for ``task_id`` named these keys and capability."""
        if capability:
            self._mine[task_id] = capability
        if not keys:
            return
        try:
            public = keys_from_json(keys)
        except SignatureError as exc:
            log.warning("the supernode sent a bad key: %s", exc)
            return
        task_keys = self._keys.get(task_id)
        if task_keys is None:
            if len(self._keys) >= MAX_TASKS:
                self._keys.pop(next(iter(self._keys)))
            task_keys = self._keys[task_id] = TaskKeys()
        for key in public:
            task_keys.add(key)
            if len(self._any) < 64:
                self._any.add(key)

    def forget(self, task_id: str) -> None:
        """The blob left the store."""
        self._mine.pop(task_id, None)
        self._keys.pop(task_id, None)

    def capability(self, task_id: str) -> str | None:
        return self._mine.get(task_id)

    def keys_for(self, task_id: str) -> TaskKeys | None:
        keys = self._keys.get(task_id)
        if keys is not None:
            return keys
        return self._any if len(self._any) else None
