"""Capabilities: the supernode's signed word that a node may fetch a task's pieces.

A node gets a capability when it opens a task (and a fresh one in report answers before
it expires), only once the supernode knows the node may pull the blob: the blob is
public, or the node proved pull rights with its own credentials. Every ``/pieces``
request carries it (``CAPABILITY_HEADER``); the seed and every piece server check it
before a byte leaves: signed by a key the server trusts for that task (the task's
statement keys, which every member already holds), for that task, for the caller (the
name in its certificate; on an insecure cluster, the id it claims), not expired.

One signature covers every task of an open (a node opens an image's layers together):
it signs the peer id, the expiry and the root of a hash tree over the tasks' ids, and
each task's capability carries the sibling hashes from its id up to that root (none for
a single task). A capability so names one task only: another task's id does not lead to
the signed root without a second preimage of sha256. Leaves and inner nodes are hashed
with different prefixes, so an inner node cannot pass for a task.

Wire form, base64url without padding: expiry (8 bytes, big-endian unix seconds), key id
(8), Ed25519 signature (64), the number of sibling hashes (1) and the hashes (32 each),
then the peer id (UTF-8). The task id is not carried: the server knows it from the
request's path, and the signature binds it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from swarmpull.core.fields import PEER_ID_RE
from swarmpull.core.protocol import MAX_CAPABILITY
from swarmpull.core.signing import SignatureError, Signer, TaskKeys

CAPABILITY_HEADER = "X-Swarmpull-Capability"
LIFETIME = 600.0  # seconds a capability is good for
RENEW_BEFORE = 180.0  # a report answer carries a fresh one once less than this is left
SKEW = 60.0  # seconds of clock difference tolerated between supernode and servers
MAX_PROOF = 8  # sibling hashes: a tree over up to 256 tasks (protocol.MAX_BATCH)

_HEAD = struct.Struct(">Q8s64sB")
_CONTEXT = b"swarmpull capability v2\x00"
_LEAF, _NODE = b"\x00", b"\x01"


class CapabilityError(ValueError):
    """A capability that is malformed, forged, expired, or for another peer or task."""


def _message(peer_id: str, root: bytes, expires: int) -> bytes:
    return _CONTEXT + peer_id.encode() + b"\x00" + root + struct.pack(">Q", expires)


def _leaf(task_id: str) -> bytes:
    return hashlib.sha256(_LEAF + task_id.encode()).digest()


def _node(a: bytes, b: bytes) -> bytes:
    """A pair's parent: the order of the two does not matter, so a proof needs no sides."""
    return hashlib.sha256(_NODE + min(a, b) + max(a, b)).digest()


def _root(task_id: str, proof: tuple[bytes, ...]) -> bytes:
    node = _leaf(task_id)
    for sibling in proof:
        node = _node(node, sibling)
    return node


def _tree(task_ids: list[str]) -> tuple[bytes, dict[str, tuple[bytes, ...]]]:
    """The root over ``task_ids`` and each one's sibling hashes up to it (a node without
    a sibling goes up a level as it is)."""
    level = [(_leaf(t), [t]) for t in task_ids]
    proofs: dict[str, list[bytes]] = {t: [] for t in task_ids}
    while len(level) > 1:
        up = []
        for i in range(0, len(level) - 1, 2):
            (a, under_a), (b, under_b) = level[i], level[i + 1]
            for t in under_a:
                proofs[t].append(b)
            for t in under_b:
                proofs[t].append(a)
            up.append((_node(a, b), under_a + under_b))
        if len(level) % 2:
            up.append(level[-1])
        level = up
    return level[0][0], {t: tuple(p) for t, p in proofs.items()}


@dataclass(frozen=True, slots=True)
class Capability:
    """Peer ``peer_id`` may fetch task ``task_id``'s pieces until ``expires`` (unix s)."""

    peer_id: str
    task_id: str
    expires: int
    key: bytes  # the signing key's id, 8 bytes
    signature: bytes  # 64 bytes
    proof: tuple[bytes, ...] = ()  # sibling hashes from the task's leaf to the signed root

    def encode(self) -> str:
        head = _HEAD.pack(self.expires, self.key, self.signature, len(self.proof))
        raw = head + b"".join(self.proof) + self.peer_id.encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    def due(self, now: float) -> bool:
        """Time to ask for a fresh one."""
        return self.expires - now < RENEW_BEFORE


def issue(signer: Signer, peer_id: str, task_id: str, now: float, lifetime: float = LIFETIME) -> Capability:
    """A capability for ``peer_id`` on ``task_id``, good ``lifetime`` seconds from ``now``."""
    return issue_many(signer, peer_id, [task_id], now, lifetime)[task_id]


def issue_many(
    signer: Signer, peer_id: str, task_ids: Iterable[str], now: float, lifetime: float = LIFETIME
) -> dict[str, Capability]:
    """A capability for ``peer_id`` on each of ``task_ids`` (at most ``2 ** MAX_PROOF``),
    good ``lifetime`` seconds from ``now``, all under one signature."""
    ids = sorted(set(task_ids))
    if not 1 <= len(ids) <= 1 << MAX_PROOF:
        raise ValueError(f"a capability covers 1 to {1 << MAX_PROOF} tasks, not {len(ids)}")
    expires = int(now + lifetime)
    root, proofs = _tree(ids)
    signature = signer.sign(_message(peer_id, root, expires))
    return {t: Capability(peer_id, t, expires, signer.key_id, signature, proofs[t]) for t in ids}


def decode(text: str, task_id: str) -> Capability:
    """The capability in ``text`` for ``task_id`` (not yet checked); CapabilityError if
    it is malformed."""
    if not text or len(text) > MAX_CAPABILITY:
        raise CapabilityError("no capability, or one too long")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise CapabilityError("a capability is base64url") from None
    if len(raw) <= _HEAD.size:
        raise CapabilityError("a capability too short")
    expires, key, signature, count = _HEAD.unpack_from(raw)
    if count > MAX_PROOF:
        raise CapabilityError(f"a capability with over {MAX_PROOF} sibling hashes")
    end = _HEAD.size + 32 * count
    if len(raw) <= end:
        raise CapabilityError("a capability too short")
    proof = tuple(raw[i : i + 32] for i in range(_HEAD.size, end, 32))
    try:
        peer_id = raw[end:].decode()
    except UnicodeDecodeError:
        raise CapabilityError("a capability's peer id is not UTF-8") from None
    if not PEER_ID_RE.fullmatch(peer_id):
        raise CapabilityError("a capability's peer id is not a peer id")
    return Capability(peer_id, task_id, expires, key, signature, proof)


def verify(text: str, keys: TaskKeys, task_id: str, caller: str | None, now: float) -> Capability:
    """The capability in ``text`` if it lets ``caller`` fetch ``task_id`` at ``now``:
    signed by one of ``keys``, for that task, issued to ``caller``, not expired (``SKEW``
    allowed). ``caller`` is the certificate's name; None on an insecure cluster, where the
    capability binds only the peer id it names. CapabilityError otherwise."""
    capability = decode(text, task_id)
    if caller is not None and capability.peer_id != caller:
        raise CapabilityError(f"the capability is {capability.peer_id}'s, not {caller}'s")
    message = _message(capability.peer_id, _root(task_id, capability.proof), capability.expires)
    try:
        keys.verify(capability.key, capability.signature, message)
    except SignatureError as exc:
        raise CapabilityError(f"the capability is not for this task, or forged: {exc}") from None
    if capability.expires + SKEW < now:
        raise CapabilityError("the capability expired")
    return capability
