"""Capabilities: only the peer, the task and the time they were issued for pass."""

from __future__ import annotations

import base64
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarmpull.core.capability import (
    MAX_PROOF,
    SKEW,
    Capability,
    CapabilityError,
    decode,
    issue,
    issue_many,
    verify,
)
from swarmpull.core.protocol import MAX_BATCH, MAX_CAPABILITY
from swarmpull.core.signing import Signer, TaskKeys

TASK = "sha256-" + "a" * 64
OTHER_TASK = "sha256-" + "b" * 64
NOW = 1_800_000_000.0


@pytest.fixture
def signer() -> Signer:
    return Signer.generate()


@pytest.fixture
def keys(signer: Signer) -> TaskKeys:
    return TaskKeys({signer.key_id: signer.public_key})


def test_a_capability_passes_for_its_peer_task_and_time(signer: Signer, keys: TaskKeys) -> None:
    text = issue(signer, "node-a", TASK, NOW).encode()
    assert len(text) < 200  # a header, not a document
    capability = verify(text, keys, TASK, "node-a", NOW + 599)
    assert capability.peer_id == "node-a" and capability.expires == int(NOW + 600)


def test_another_peer_gets_nothing_with_it(signer: Signer, keys: TaskKeys) -> None:
    text = issue(signer, "node-a", TASK, NOW).encode()
    with pytest.raises(CapabilityError, match="node-a's, not node-b's"):
        verify(text, keys, TASK, "node-b", NOW)


def test_another_task_gets_nothing_with_it(signer: Signer, keys: TaskKeys) -> None:
    text = issue(signer, "node-a", TASK, NOW).encode()
    with pytest.raises(CapabilityError, match="not for this task"):
        verify(text, keys, OTHER_TASK, "node-a", NOW)


def test_an_expired_capability_is_refused_past_the_skew(signer: Signer, keys: TaskKeys) -> None:
    text = issue(signer, "node-a", TASK, NOW, lifetime=10).encode()
    verify(text, keys, TASK, "node-a", NOW + 10 + SKEW - 1)  # clocks differ a little
    with pytest.raises(CapabilityError, match="expired"):
        verify(text, keys, TASK, "node-a", NOW + 10 + SKEW + 1)


def test_a_key_the_server_does_not_trust_is_refused(keys: TaskKeys) -> None:
    text = issue(Signer.generate(), "node-a", TASK, NOW).encode()
    with pytest.raises(CapabilityError, match="unknown key"):
        verify(text, keys, TASK, "node-a", NOW)


def test_a_forged_capability_is_refused(signer: Signer, keys: TaskKeys) -> None:
    real = issue(signer, "node-a", TASK, NOW)
    # node-b keeps node-a's signature and puts its own name in, or a later expiry.
    for forged in (
        Capability("node-b", TASK, real.expires, real.key, real.signature),
        Capability("node-a", TASK, real.expires + 3600, real.key, real.signature),
        Capability("node-a", TASK, real.expires, real.key, bytes(64)),
    ):
        with pytest.raises(CapabilityError, match="forged"):
            verify(forged.encode(), keys, TASK, forged.peer_id, NOW)


def test_on_an_insecure_cluster_it_binds_the_peer_id_it_names(signer: Signer, keys: TaskKeys) -> None:
    text = issue(signer, "node-a", TASK, NOW).encode()
    assert verify(text, keys, TASK, None, NOW).peer_id == "node-a"


@pytest.mark.parametrize("text", ["", "!!!", "AAAA", "A" * 300, "_" * 120])
def test_garbage_is_refused(text: str, keys: TaskKeys) -> None:
    with pytest.raises(CapabilityError):
        verify(text, keys, TASK, None, NOW)


def test_decode_round_trips(signer: Signer) -> None:
    capability = issue(signer, "node.a:1-x", TASK, NOW)
    assert decode(capability.encode(), TASK) == capability
    assert capability.due(capability.expires - 10) and not capability.due(NOW)


def _task(i: int) -> str:
    return f"sha256-{i:064x}"


@given(st.sets(st.integers(0, 10_000), min_size=1, max_size=40), st.integers(0, 10_000))
def test_one_signature_covers_the_tasks_of_an_open_and_no_other(ids: set[int], other: int) -> None:
    signer = Signer.generate()
    keys = TaskKeys({signer.key_id: signer.public_key})
    tasks = [_task(i) for i in ids]
    issued = issue_many(signer, "node-a", tasks, NOW)
    assert set(issued) == set(tasks)
    assert len({c.signature for c in issued.values()}) == 1
    for task, capability in issued.items():
        text = capability.encode()
        assert decode(text, task) == capability
        assert verify(text, keys, task, "node-a", NOW).task_id == task
        if other not in ids:  # another task's id does not lead to the signed root
            with pytest.raises(CapabilityError, match="forged"):
                verify(text, keys, _task(other), "node-a", NOW)


def test_a_sibling_hash_changed_or_dropped_breaks_the_capability(signer: Signer, keys: TaskKeys) -> None:
    tasks = [_task(i) for i in range(8)]
    real = issue_many(signer, "node-a", tasks, NOW)[tasks[3]]
    assert len(real.proof) == 3
    for proof in ((bytes(32), *real.proof[1:]), real.proof[:-1]):
        forged = replace(real, proof=proof)
        with pytest.raises(CapabilityError, match="forged"):
            verify(forged.encode(), keys, tasks[3], "node-a", NOW)


def test_an_inner_node_does_not_pass_for_a_task(signer: Signer, keys: TaskKeys) -> None:
    """The pair (A, B) hashes to an inner node; a capability for A and B cannot be turned
    into one for a 'task' whose leaf that node would be: leaves and nodes differ."""
    a, b = _task(1), _task(2)
    one = issue_many(signer, "node-a", [a, b], NOW)[a]
    lone = Capability("node-a", a, one.expires, one.key, one.signature, ())
    with pytest.raises(CapabilityError, match="forged"):
        verify(lone.encode(), keys, a, "node-a", NOW)


def test_the_largest_open_fits_the_wire_limit(signer: Signer) -> None:
    tasks = [_task(i) for i in range(MAX_BATCH)]
    issued = issue_many(signer, "n" * 128, tasks, NOW)
    longest = max(len(c.encode()) for c in issued.values())
    assert max(len(c.proof) for c in issued.values()) == MAX_PROOF
    assert longest <= MAX_CAPABILITY
    with pytest.raises(ValueError, match="1 to 256 tasks"):
        issue_many(signer, "node-a", [_task(i) for i in range(MAX_BATCH + 1)], NOW)


def test_a_capability_claiming_too_many_sibling_hashes_is_refused(signer: Signer, keys: TaskKeys) -> None:
    real = issue(signer, "node-a", TASK, NOW)
    raw = bytearray(base64.urlsafe_b64decode(real.encode() + "=" * (-len(real.encode()) % 4)))
    raw[80] = MAX_PROOF + 1
    text = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    with pytest.raises(CapabilityError, match="sibling hashes"):
        verify(text, keys, TASK, "node-a", NOW)
