"""Statements a supernode signs so that any node can check them, whoever relays them.

A ``PieceStatement`` says "piece P of task T has sha256 S", signed with the supernode's
Ed25519 key. The supernode signs each piece once, as it reads it from upstream; nodes
relay the statements with their piece maps, so a node learns the sha256 of a piece from
whichever parent holds it, and the supernode's work does not grow with pieces x nodes.
A node trusts a statement only under a key its supernode gave it over the authenticated
control channel (``TaskKeys``).

Wire form of a statement, 108 bytes: piece (4, big-endian), sha256 (32), key id (8),
signature (64). The signed message binds the task id, so a statement cannot be replayed
for another blob.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

STATEMENT_SIZE = 108
_STATEMENT = struct.Struct(">I32s8s64s")
_PIECE_CONTEXT = b"swarmpull piece sha256 v1\x00"


class SignatureError(ValueError):
    """A statement that is malformed, signed by an unknown key, or forged."""


def key_id(public_key: bytes) -> bytes:
    """The 8-byte id of a raw Ed25519 public key."""
    return hashlib.sha256(public_key).digest()[:8]


def _piece_message(task_id: str, piece: int, sha: bytes) -> bytes:
    return _PIECE_CONTEXT + task_id.encode() + b"\x00" + struct.pack(">I", piece) + sha


@dataclass(frozen=True, slots=True)
class PieceStatement:
    piece: int
    sha: bytes  # raw sha256, 32 bytes
    key: bytes  # key id, 8 bytes
    signature: bytes  # 64 bytes

    def encode(self) -> bytes:
        return _STATEMENT.pack(self.piece, self.sha, self.key, self.signature)

    @classmethod
    def decode(cls, data: bytes | memoryview) -> PieceStatement:
        if len(data) != STATEMENT_SIZE:
            raise SignatureError(f"a piece statement is {STATEMENT_SIZE} bytes, not {len(data)}")
        piece, sha, key, signature = _STATEMENT.unpack(data)
        return cls(piece, sha, key, signature)

    @property
    def sha_hex(self) -> str:
        return self.sha.hex()


class Signer:
    """A supernode's signing key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id = key_id(self.public_key)

    @classmethod
    def generate(cls) -> Signer:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, data: bytes) -> Signer:
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise SignatureError("the signing key is not an Ed25519 key")
        return cls(key)

    def to_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def sign(self, message: bytes) -> bytes:
        """A signature of ``message``; callers prefix a context of their own, so that
        nothing signed for one purpose checks for another."""
        return self._key.sign(message)

    def piece(self, task_id: str, piece: int, sha_hex: str) -> PieceStatement:
        sha = bytes.fromhex(sha_hex)
        signature = self._key.sign(_piece_message(task_id, piece, sha))
        return PieceStatement(piece, sha, self.key_id, signature)


class TaskKeys:
    """The keys a node trusts for one task: those its supernode named when it opened the
    task (every replica that owned the task signs with its own)."""

    def __init__(self, keys: dict[bytes, bytes] | None = None) -> None:
        self._keys: dict[bytes, Ed25519PublicKey] = {}
        for public in (keys or {}).values():
            self.add(public)

    def add(self, public_key: bytes) -> None:
        try:
            self._keys[key_id(public_key)] = Ed25519PublicKey.from_public_bytes(public_key)
        except ValueError:
            raise SignatureError("not an Ed25519 public key") from None

    def __len__(self) -> int:
        return len(self._keys)

    def check(self, task_id: str, statement: PieceStatement) -> str:
        """The statement's sha256 in hex if a trusted key signed it; else SignatureError."""
        public = self._keys.get(statement.key)
        if public is None:
            raise SignatureError(f"piece {statement.piece}: signed by an unknown key")
        try:
            public.verify(statement.signature, _piece_message(task_id, statement.piece, statement.sha))
        except InvalidSignature:
            raise SignatureError(f"piece {statement.piece}: the signature does not match") from None
        return statement.sha.hex()

    def verify(self, key: bytes, signature: bytes, message: bytes) -> None:
        """SignatureError unless the trusted key of id ``key`` signed ``message``."""
        public = self._keys.get(key)
        if public is None:
            raise SignatureError("signed by an unknown key")
        try:
            public.verify(signature, message)
        except InvalidSignature:
            raise SignatureError("the signature does not match") from None


def keys_to_json(keys: list[bytes]) -> list[str]:
    return [base64.b64encode(k).decode() for k in keys]


def keys_from_json(raw: object) -> list[bytes]:
    if not isinstance(raw, list) or len(raw) > 64:
        raise SignatureError("'keys' must be a list of base64 public keys")
    out = []
    for item in raw:
        try:
            key = base64.b64decode(str(item).encode(), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise SignatureError("a key is not base64") from None
        if len(key) != 32:
            raise SignatureError("an Ed25519 public key is 32 bytes")
        out.append(key)
    return out
