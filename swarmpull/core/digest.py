"""Content digests (``sha256:<64 hex>``), parsed once at the edge into a validated type."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

_SHA256 = re.compile(r"^sha256:([a-f0-9]{64})\Z")
# The OCI grammar: algorithm ":" encoded; we accept it to give a precise error.
_ANY_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+\Z")


class DigestError(ValueError):
    """A digest string that is malformed or uses an algorithm we do not support."""


@dataclass(frozen=True, slots=True)
class Digest:
    """A sha256 content digest."""

    hex: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        match = _SHA256.fullmatch(text)
        if match:
            return cls(match.group(1))
        if _ANY_DIGEST.fullmatch(text) and not text.startswith("sha256:"):
            raise DigestError(f"unsupported digest {text!r}: only sha256 is supported")
        raise DigestError(f"invalid digest {text!r}: expected sha256:<64 lowercase hex>")

    @classmethod
    def of(cls, data: bytes) -> Digest:
        return cls(hashlib.sha256(data).hexdigest())

    def __str__(self) -> str:
        return f"sha256:{self.hex}"


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()
