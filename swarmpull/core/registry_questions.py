"""What a node's registry proxy asks the cluster about a registry, the answers, and how
they fail: a manifest (by tag or digest) and a blob's descriptor, answered by the
supernode from what the cluster holds, so that the registry sees O(layers) requests.

Shared by the proxy (which asks), the peer (which carries the questions over its
control channel) and the supernode (which answers). Parsed at each edge; an answer's
manifest bytes are checked against its digest when parsed, so no unverified byte
reaches a client.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

from swarmpull.core.digest import Digest, DigestError
from swarmpull.core.fields import ProtocolError
from swarmpull.core.oci import (
    ACCEPT_ALL,
    MAX_MANIFEST,
    TAG_RE,
    Descriptor,
    check_host,
    check_media_type,
    check_name,
)
from swarmpull.core.protocol import MAX_HEADER_VALUE


class RegistryRefused(Exception):
    """The registry said no to this node (its own credential was checked): ``status``
    and OCI ``code`` for the client, the registry's ``challenge`` on a 401."""

    def __init__(self, status: int, code: str, message: str, challenge: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.challenge = challenge


class NotAnswered(Exception):
    """The cluster has no answer (no supernode, the registry is out of its reach and it
    holds nothing to stand in, or it does not know this blob): ask the registry directly."""


@dataclass(frozen=True, slots=True)
class ManifestQuestion:
    registry: str
    """The registry host as the client named it (``?ns=``)."""
    repository: str
    """The repository as the client named it (``alpine`` is ``library/alpine`` at Docker Hub)."""
    reference: str
    """A tag or a sha256 digest."""
    accept: str = ACCEPT_ALL
    """The client's ``Accept``: a tag may name another manifest for another one."""
    head: bool = False
    """Only the descriptor is wanted (a HEAD), not the bytes."""
    authorization: str | None = field(default=None, repr=False)
    """The node's own credential for this registry (a secret); None: anonymous."""

    @property
    def digest(self) -> Digest | None:
        return Digest.parse(self.reference) if ":" in self.reference else None

    def to_json(self) -> dict[str, Any]:
        return {
            "registry": self.registry,
            "repository": self.repository,
            "reference": self.reference,
            "accept": self.accept,
            "head": self.head,
            "authorization": self.authorization,
        }


@dataclass(frozen=True, slots=True)
class ManifestAnswer:
    descriptor: Descriptor
    data: bytes | None = field(default=None, repr=False)
    """The manifest (None for a HEAD), hashing to ``descriptor.digest``."""
    stale: bool = False
    """A tag resolved longer ago than the tag TTL: the registry could not be asked."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {**descriptor_json(self.descriptor), "stale": self.stale}
        if self.data is not None:
            out["data"] = base64.b64encode(self.data).decode()
        return out


@dataclass(frozen=True, slots=True)
class BlobQuestion:
    registry: str
    repository: str
    digest: Digest
    authorization: str | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "registry": self.registry,
            "repository": self.repository,
            "digest": str(self.digest),
            "authorization": self.authorization,
        }


def parse_manifest_question(raw: Any) -> ManifestQuestion:
    body = _obj(raw)
    reference = _text(body, "reference", 200)
    if ":" in reference:
        _parse_digest(reference, "reference")
    elif not TAG_RE.match(reference):
        raise ProtocolError("'reference' must be a tag or a sha256 digest")
    head = body.get("head", False)
    if not isinstance(head, bool):
        raise ProtocolError("'head' must be true or false")
    return ManifestQuestion(
        _host(body),
        _repository(body),
        reference,
        _text(body, "accept", 2048, default=ACCEPT_ALL),
        head,
        _authorization(body),
    )


def parse_blob_question(raw: Any) -> BlobQuestion:
    body = _obj(raw)
    return BlobQuestion(
        _host(body),
        _repository(body),
        _parse_digest(_text(body, "digest", 100), "digest"),
        _authorization(body),
    )


def parse_manifest_answer(raw: Any) -> ManifestAnswer:
    """An answer, its bytes checked against its digest and size: ProtocolError if not."""
    body = _obj(raw)
    descriptor = parse_descriptor(body)
    data = None
    if body.get("data") is not None:
        text = _text(body, "data", MAX_MANIFEST * 4 // 3 + 4)
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("'data' must be base64") from None
        if len(data) != descriptor.size or Digest.of(data) != descriptor.digest:
            raise ProtocolError(f"the manifest's bytes do not match {descriptor.digest}")
    stale = body.get("stale", False)
    return ManifestAnswer(descriptor, data, stale is True)


def parse_descriptor(raw: Any) -> Descriptor:
    body = _obj(raw)
    size = body.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= 1 << 50:
        raise ProtocolError("'size' must be a whole number of bytes")
    try:
        media_type = check_media_type(_text(body, "media_type", 255))
    except ValueError as exc:
        raise ProtocolError(str(exc)) from None
    return Descriptor(_parse_digest(_text(body, "digest", 100), "digest"), media_type, size)


def descriptor_json(descriptor: Descriptor) -> dict[str, Any]:
    """A descriptor on the wire (a blob's answer is one)."""
    return {"digest": str(descriptor.digest), "media_type": descriptor.media_type, "size": descriptor.size}


# ----------------------------------------------------------------- field readers


def _obj(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ProtocolError("body must be a JSON object")
    return raw


def _text(body: dict[str, Any], key: str, limit: int, default: str | None = None) -> str:
    value = body.get(key, default)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ProtocolError(f"{key!r} must be a non-empty string of at most {limit} characters")
    return value


def _host(body: dict[str, Any]) -> str:
    try:
        return check_host(_text(body, "registry", 300))
    except ValueError as exc:
        raise ProtocolError(str(exc)) from None


def _repository(body: dict[str, Any]) -> str:
    try:
        return check_name(_text(body, "repository", 300))
    except ValueError as exc:
        raise ProtocolError(str(exc)) from None


def _authorization(body: dict[str, Any]) -> str | None:
    value = body.get("authorization")
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not value
        or len(value) > MAX_HEADER_VALUE
        or "\n" in value
        or "\r" in value
    ):
        raise ProtocolError(
            f"'authorization' must be a header value of at most {MAX_HEADER_VALUE} characters"
        )
    return value


def _parse_digest(text: str, key: str) -> Digest:
    try:
        return Digest.parse(text)
    except DigestError as exc:
        raise ProtocolError(f"{key!r}: {exc}") from None
