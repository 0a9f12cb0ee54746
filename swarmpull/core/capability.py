"""Capabilities: the supernode's signed word that a node may fetch a task's pieces.

A node gets a capability when it opens a task (and a fresh one in report answers before
it expires), only once the supernode knows the node may pull the blob: the blob is
public, or the node proved pull rights with its own credentials. Every ``/pieces``
request carries it (``CAPABILITY_HEADER``); the seed and every piece server check it
before a byte leaves: signed by a key the server trusts for that task (the task's
statement keys, which every member already holds), for that task, for the caller (the
name in its certificate; on an insecure cluster, the id it claims), not expired.

Wire form, base64url without padding: expiry (8 bytes, big-endian unix seconds), key id
(8), Ed25519 signature (64), then the peer id (UTF-8). The task id is not carried: the
server knows it from the request's path, and the signature binds it.
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass

from swarmpull.core.protocol import PEER_ID_RE
from swarmpull.core.signing import SignatureError, Signer, TaskKeys

CAPABILITY_HEADER = "X-Swarmpull-Capability"
LIFETIME = 600.0  # seconds a capability is good for
RENEW_BEFORE = 180.0  # a report answer carries a fresh one once less than this is left
SKEW = 60.0  # seconds of clock difference tolerated between supernode and servers
MAX_TEXT = 256  # the longest wire form (a 128-character peer id)

_HEAD = struct.Struct(">Q8s64s")
_CONTEXT = b"swarmpull capability v1\x00"


class CapabilityError(ValueError):
    """A capability that is malformed, forged, expired, or for another peer or task."""


def _message(peer_id: str, task_id: str, expires: int) -> bytes:
    return _CONTEXT + peer_id.encode() + b"\x00" + task_id.encode() + b"\x00" + struct.pack(">Q", expires)


@dataclass(frozen=True, slots=True)
class Capability:
    """Peer ``peer_id`` may fetch task ``task_id``'s pieces until ``expires`` (unix s)."""

    peer_id: str
    task_id: str
    expires: int
    key: bytes  # the signing key's id, 8 bytes
    signature: bytes  # 64 bytes

    def encode(self) -> str:
        raw = _HEAD.pack(self.expires, self.key, self.signature) + self.peer_id.encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    def due(self, now: float) -> bool:
        """Time to ask for a fresh one."""
        return self.expires - now < RENEW_BEFORE


def issue(signer: Signer, peer_id: str, task_id: str, now: float, lifetime: float = LIFETIME) -> Capability:
    """A capability for ``peer_id`` on ``task_id``, good ``lifetime`` seconds from ``now``."""
    expires = int(now + lifetime)
    signature = signer.sign(_message(peer_id, task_id, expires))
    return Capability(peer_id, task_id, expires, signer.key_id, signature)


def decode(text: str, task_id: str) -> Capability:
    """The capability in ``text`` for ``task_id`` (not yet checked); CapabilityError if
    it is malformed."""
    if not text or len(text) > MAX_TEXT:
        raise CapabilityError("no capability, or one too long")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise CapabilityError("a capability is base64url") from None
    if len(raw) <= _HEAD.size:
        raise CapabilityError("a capability too short")
    expires, key, signature = _HEAD.unpack_from(raw)
    try:
        peer_id = raw[_HEAD.size :].decode()
    except UnicodeDecodeError:
        raise CapabilityError("a capability's peer id is not UTF-8") from None
    if not PEER_ID_RE.fullmatch(peer_id):
        raise CapabilityError("a capability's peer id is not a peer id")
    return Capability(peer_id, task_id, expires, key, signature)


def verify(text: str, keys: TaskKeys, task_id: str, caller: str | None, now: float) -> Capability:
    """The capability in ``text`` if it lets ``caller`` fetch ``task_id`` at ``now``:
    signed by one of ``keys``, for that task, issued to ``caller``, not expired (``SKEW``
    allowed). ``caller`` is the certificate's name; None on an insecure cluster, where the
    capability binds only the peer id it names. CapabilityError otherwise."""
    capability = decode(text, task_id)
    if caller is not None and capability.peer_id != caller:
        raise CapabilityError(f"the capability is {capability.peer_id}'s, not {caller}'s")
    message = _message(capability.peer_id, task_id, capability.expires)
    try:
        keys.verify(capability.key, capability.signature, message)
    except SignatureError as exc:
        raise CapabilityError(f"the capability is not for this task, or forged: {exc}") from None
    if capability.expires + SKEW < now:
        raise CapabilityError("the capability expired")
    return capability
