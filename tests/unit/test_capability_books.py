"""Who gets a capability, and the keys a node checks them with (no I/O)."""

from __future__ import annotations

import pytest

from peer.capabilities import CapabilityBook
from supernode.capabilities import has_credentials
from supernode.seed_task import Source
from swarmpull.core.capability import CapabilityError, issue, verify
from swarmpull.core.signing import Signer, keys_to_json

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
