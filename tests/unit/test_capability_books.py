"""Who gets a capability, and the keys a node checks them with (no I/O)."""

from __future__ import annotations

import pytest

from peer.capabilities import CapabilityBook
from supernode.capabilities import CapabilityDesk, has_credentials
from supernode.seed_task import SeedTask, Source
from swarmpull.core.capability import LIFETIME, RENEW_BEFORE, CapabilityError, issue, verify
from swarmpull.core.clock import SystemClock
from swarmpull.core.signing import Signer, TaskKeys, keys_to_json

TASK = "sha256-" + "c" * 64
OPENED = "sha256-" + "d" * 64


def test_what_counts_as_credentials() -> None:
    assert not has_credentials(Source("https://registry.example/v2/app/blobs/sha256:1"))
    assert not has_credentials(Source("https://h/x", {"Accept": "*/*", "X-Swarmpull-Peer": "p"}))
    assert has_credentials(Source("https://h/x", {"authorization": "Bearer t"}))
    assert has_credentials(Source("https://h/x", {"Cookie": "session=1"}))
    assert has_credentials(Source("https://h/x", {"X-Api-Key": "k"}))  # any header but harmless ones
    assert has_credentials(Source("https://user:pw@h/x"))
    assert has_credentials(Source("https://h/x?X-Amz-Signature=abc"))  # a presigned URL


def test_a_node_checks_with_the_keys_its_supernodes_named() -> None:
    book = CapabilityBook()
    assert book.keys_for(TASK) is None  # nothing heard yet: every requester is refused
    supernode, stranger = Signer.generate(), Signer.generate()
    book.learn(OPENED, keys_to_json([supernode.public_key]), "mine")
    keys = book.keys_for(TASK)  # a task not opened since the start: any key heard
    assert keys is not None
    verify(issue(supernode, "node-b", TASK, 1000.0).encode(), keys, TASK, "node-b", 1000.0)
    with pytest.raises(CapabilityError, match="unknown key"):
        verify(issue(stranger, "node-b", TASK, 1000.0).encode(), keys, TASK, "node-b", 1000.0)
    assert book.capability(OPENED) == "mine" and book.capability(TASK) is None
    book.forget(OPENED)
    assert book.capability(OPENED) is None


class _Seeds:
    """The seed's side for a desk: one task, signed by this replica, an earlier owner's
    key among its keys (a task taken over)."""

    def __init__(self, task: SeedTask, mine: Signer, earlier: Signer) -> None:
        self.tasks = {task.id: task}
        self._mine, self._earlier = mine, earlier

    def signer(self, task: SeedTask) -> Signer:
        return self._mine

    def keys(self, task: SeedTask) -> list[str]:
        return keys_to_json([self._mine.public_key, self._earlier.public_key])

    def keep_piece(self, task: SeedTask, piece: int, data: bytes) -> None:
        raise AssertionError("no proof here")


async def test_a_report_renews_a_private_capability_only_for_whom_it_can_check() -> None:
    now = 10_000.0
    task = SeedTask(TASK, Source("https://h/x"), None)
    task.public = False
    mine, earlier, stranger = Signer.generate(), Signer.generate(), Signer.generate()
    desk = CapabilityDesk(_Seeds(task, mine, earlier), "seed", None, 60.0, SystemClock(), wall=lambda: now)  # type: ignore[arg-type]

    assert desk.renew(task, "node-b") is None  # a stranger that reports on the digest
    # A member the earlier owner let in shows its capability, due for renewal: renewed.
    shown = issue(earlier, "node-a", TASK, now - 500).encode()
    fresh = desk.renew(task, "node-a", shown)
    assert fresh is not None and verify(fresh, _keys(mine), TASK, "node-a", now).expires > now + 500
    assert desk.renew(task, "node-b", shown) is None  # another node's
    assert (
        desk.renew(task, "node-c", issue(stranger, "node-c", TASK, now).encode()) is None
    )  # no key of the task
    assert (
        desk.renew(task, "node-d", issue(earlier, "node-d", OPENED, now).encode()) is None
    )  # another task's
    assert desk.renew(task, "node-e", issue(earlier, "node-e", TASK, now - 900).encode()) is None  # expired
    task.public = True
    assert desk.renew(task, "node-b") is not None  # a public blob: anyone


def test_a_node_shows_its_capability_only_when_it_is_due_for_renewal() -> None:
    book, signer, now = CapabilityBook(), Signer.generate(), 10_000.0
    assert book.due(TASK, now) is None
    book.learn(TASK, [], issue(signer, "me", TASK, now).encode())
    assert book.due(TASK, now) is None  # ten minutes left
    assert book.due(TASK, now + LIFETIME - RENEW_BEFORE + 1) == book.capability(TASK)


def _keys(signer: Signer) -> TaskKeys:
    keys = TaskKeys()
    keys.add(signer.public_key)
    return keys
