"""Capabilities: only the peer, the task and the time they were issued for pass."""

from __future__ import annotations

import pytest

from swarmpull.core.capability import SKEW, Capability, CapabilityError, decode, issue, verify
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
