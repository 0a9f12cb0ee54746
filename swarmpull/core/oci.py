"""OCI distribution vocabulary, pure: the grammar of names, tags and registry hosts,
manifest media types, descriptors, reading a manifest's references, choosing a
platform's manifest from an index, and image references as people write them.

Shared by the registry proxy (parsing requests), the supernode (what a verified manifest
says about the blobs of its repository) and preheat (tag -> index -> the platform's
manifest -> layers).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from swarmpull.core.digest import Digest, DigestError

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*\Z")
TAG_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}\Z")
MAX_NAME = 255
HOST_RE = re.compile(
    r"^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*|\[[0-9a-f:.]+\])(?::\d{1,5})?\Z"
)
MAX_MANIFEST = 4 << 20  # bytes: what registries accept, and what we read at most

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST})
ACCEPT_ALL = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST, "*/*"))
_MEDIA_TYPE = re.compile(r"^[\w.+-]+/[\w.+-]+\Z")


def check_host(text: str) -> str:
    """A registry host (``host``, ``host:port`` or ``[v6]:port``), lowercased; ValueError."""
    host = text.strip().lower()
    if not HOST_RE.match(host):
        raise ValueError(f"invalid registry host {text!r}")
    return host


def check_name(name: str) -> str:
    if not name or len(name) > MAX_NAME or not NAME_RE.match(name):
        raise ValueError(f"invalid repository name {name!r}")
    return name


def check_media_type(text: str) -> str:
    """A media type without parameters (``type/subtype``); ValueError."""
    if len(text) > 255 or not _MEDIA_TYPE.match(text):
        raise ValueError(f"invalid media type {text!r}")
    return text


def accept_key(header: str) -> str:
    """An ``Accept`` header as a cache key: its media types, without parameters, sorted.
    A tag may resolve to another manifest for another ``Accept``; the order does not matter."""
    types = {part.split(";", 1)[0].strip().lower() for part in header.split(",")}
    return ",".join(sorted(t for t in types if t)) or "*/*"


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``linux/amd64`` or ``linux/arm64/v8``."""
        parts = text.strip().lower().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"a platform is os/architecture[/variant], not {text!r}")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True, slots=True)
class Descriptor:
    """What a registry or a manifest says of one piece of content."""

    digest: Digest
    media_type: str
    size: int
    platform: Platform | None = None  # for the entries of an index


@dataclass(frozen=True, slots=True)
class ParsedManifest:
    """A manifest's references: an index lists manifests; an image manifest its config
    and layers (``blobs``)."""

    media_type: str
    manifests: tuple[Descriptor, ...] = ()
    blobs: tuple[Descriptor, ...] = ()

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


def parse_manifest(data: bytes, media_type: str | None = None) -> ParsedManifest:
    """What a manifest references; ValueError if it is not a manifest we can read. The
    media type is the body's own, else ``media_type`` (the registry's Content-Type)."""
    try:
        document = json.loads(data)
    except ValueError:
        raise ValueError("the manifest is not JSON") from None
    except RecursionError:  # a hostile registry's: nested past the parser's depth
        raise ValueError("the manifest is not JSON: nested too deeply") from None
    if not isinstance(document, dict):
        raise ValueError("the manifest is not a JSON object")
    kind = document.get("mediaType") or media_type
    if not isinstance(kind, str):
        raise ValueError("the manifest names no media type")
    if "manifests" in document or kind in INDEX_TYPES:
        entries = document.get("manifests")
        if not isinstance(entries, list):
            raise ValueError("an index needs a 'manifests' list")
        return ParsedManifest(kind, manifests=tuple(_descriptor(entry) for entry in entries))
    config, layers = document.get("config"), document.get("layers")
    if not isinstance(config, dict) or not isinstance(layers, list):
        raise ValueError("an image manifest needs 'config' and 'layers'")
    return ParsedManifest(kind, blobs=tuple(_descriptor(d) for d in (config, *layers)))


def _descriptor(raw: Any) -> Descriptor:
    if not isinstance(raw, dict):
        raise ValueError("a descriptor must be a JSON object")
    size = raw.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError("a descriptor's 'size' must be a whole number")
    try:
        digest = Digest.parse(str(raw.get("digest")))
        media_type = check_media_type(str(raw.get("mediaType", "application/octet-stream")))
    except DigestError as exc:
        raise ValueError(str(exc)) from None
    platform = None
    if isinstance(raw.get("platform"), dict):
        p = raw["platform"]
        os_, arch, variant = p.get("os"), p.get("architecture"), p.get("variant")
        if isinstance(os_, str) and isinstance(arch, str):
            platform = Platform(os_, arch, variant if isinstance(variant, str) else None)
    return Descriptor(digest, media_type, size, platform)


def select_platform(index: ParsedManifest, platform: Platform) -> Descriptor:
    """The index's manifest for ``platform``: the exact variant if listed, else one
    without a variant (``linux/arm64`` matches ``linux/arm64/v8``); ValueError if none."""
    candidates = [
        d
        for d in index.manifests
        if d.platform is not None
        and (d.platform.os, d.platform.architecture) == (platform.os, platform.architecture)
    ]
    for d in candidates:
        if platform.variant is None or d.platform is None or d.platform.variant in (None, platform.variant):
            return d
    raise ValueError(f"the index has no manifest for {platform}")


@dataclass(frozen=True, slots=True)
class ImageReference:
    """``[host[:port]/]name[:tag][@digest]`` as docker and containerd read it."""

    host: str
    name: str
    tag: str | None = None
    digest: Digest | None = None

    @classmethod
    def parse(cls, text: str, default_host: str = "docker.io") -> ImageReference:
        rest, _, digest_text = text.strip().partition("@")
        first, slash, remainder = rest.partition("/")
        if slash and ("." in first or ":" in first or first == "localhost"):
            host, path = check_host(first), remainder
        else:
            host, path = default_host, rest
        name, colon, tag = path.rpartition(":")
        if not colon:
            name, tag = path, ""
        check_name(name)
        if tag and not TAG_RE.match(tag):
            raise ValueError(f"invalid tag {tag!r}")
        try:
            digest = Digest.parse(digest_text) if digest_text else None
        except DigestError as exc:
            raise ValueError(str(exc)) from None
        return cls(host, name, tag or (None if digest else "latest"), digest)

    @property
    def reference(self) -> str:
        """What the manifests endpoint is asked for: the digest when pinned, else the tag."""
        return str(self.digest) if self.digest else str(self.tag)

    def __str__(self) -> str:
        out = f"{self.host}/{self.name}"
        if self.tag:
            out += f":{self.tag}"
        return f"{out}@{self.digest}" if self.digest else out
