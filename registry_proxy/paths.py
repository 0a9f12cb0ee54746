"""Requests parsed into a validated ``DistributionPath`` before anything else happens.

The pull side of the OCI distribution API:

    /v2/                                   base: does the registry speak v2?
    /v2/<name>/manifests/<tag or digest>   a manifest
    /v2/<name>/blobs/<digest>              a blob (a layer or a config)

``<name>`` follows the spec's grammar (lowercase path components joined by ``/``);
anything else is a clean 4xx with an OCI error body.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from registry_proxy.errors import OciError, digest_invalid, name_invalid, unsupported
from swarmpull.core.digest import Digest, DigestError
from swarmpull.core.oci import MAX_NAME, NAME_RE, TAG_RE


class Kind(enum.Enum):
    BASE = "base"
    MANIFEST = "manifest"
    BLOB = "blob"


@dataclass(frozen=True, slots=True)
class DistributionPath:
    kind: Kind
    name: str = ""
    reference: str = ""  # a tag or a digest (manifests); a digest (blobs)
    digest: Digest | None = None  # set when the reference is a digest

    @property
    def by_digest(self) -> bool:
        return self.digest is not None


def parse_path(path: str) -> DistributionPath:
    """``path`` (without query string) as a ``DistributionPath``; OciError if it is not one."""
    if path in ("/v2", "/v2/"):
        return DistributionPath(Kind.BASE)
    if not path.startswith("/v2/"):
        raise OciError(404, "NOT_FOUND", f"{path} is not part of the registry API")
    tail = path[len("/v2/") :]
    kind = Kind.MANIFEST
    name, sep, reference = tail.rpartition("/manifests/")
    if not sep:
        kind = Kind.BLOB
        name, sep, reference = tail.rpartition("/blobs/")
    if not sep:
        raise unsupported(f"{path}: only manifests and blobs are served")
    if not name or len(name) > MAX_NAME or not NAME_RE.match(name):
        raise name_invalid(name)
    if kind is Kind.BLOB or ":" in reference:
        try:
            digest = Digest.parse(reference)
        except DigestError as exc:
            raise digest_invalid(reference, str(exc).split(": ", 1)[-1]) from None
        return DistributionPath(kind, name, reference, digest)
    if not TAG_RE.match(reference):
        raise OciError(400, "MANIFEST_INVALID", f"invalid tag {reference!r}")
    return DistributionPath(kind, name, reference)
