"""This node's capabilities (sent with every ``/pieces`` request) and the keys its piece
server checks other nodes' capabilities with, both as the supernode's answers gave them.

A capability is signed with one of its task's statement keys, and the signed message
names the task: a key any of this node's supernodes named (over the authenticated control
channel) can vouch only for what that supernode decided. So the server checks with every
key it has been given, whatever the task: a blob held from before a restart is served to
capabilities signed by any key heard since; a replica that took a task over is trusted
once this node heard its key (its next open or report). Until its first answer after a
start it knows no key, and refuses every requester (403): they go to other parents.
"""

from __future__ import annotations

import logging

from swarmpull.core.capability import RENEW_BEFORE, CapabilityError, decode
from swarmpull.core.signing import SignatureError, TaskKeys, keys_from_json

log = logging.getLogger(__name__)

MAX_KEYS = 4096


class CapabilityBook:
    """Per task, this node's latest capability; the supernodes' keys that sign them."""

    def __init__(self) -> None:
        self._mine: dict[str, str] = {}
        self._keys = TaskKeys()  # every key an answer named

    def __repr__(self) -> str:
        return f"<CapabilityBook {len(self._mine)} capabilities, {len(self._keys)} keys>"

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
        for key in public:
            if len(self._keys) < MAX_KEYS:  # a key per replica, and per read after a poisoned one
                self._keys.add(key)

    def forget(self, task_id: str) -> None:
        """The blob left the store."""
        self._mine.pop(task_id, None)

    def capability(self, task_id: str) -> str | None:
        return self._mine.get(task_id)

    def due(self, task_id: str, now: float) -> str | None:
        """Our capability for ``task_id`` if it is due for renewal at ``now`` (unix s),
        to show with the task's next report."""
        text = self._mine.get(task_id)
        if text is None:
            return None
        try:
            expires = decode(text, task_id).expires
        except CapabilityError:
            return None
        return text if expires - now < RENEW_BEFORE else None

    def keys_for(self, task_id: str) -> TaskKeys | None:
        return self._keys if len(self._keys) else None
