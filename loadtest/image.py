"""OCI and Docker images built in memory, the same bytes for the same seed, and pushed to a
registry with the plain distribution API (no docker needed).

Layers hold pseudo-random bytes, so a gzip layer is as large as asked (random data does not
shrink) and no two seeds share content. The config is what containerd needs to unpack:
``rootfs.diff_ids`` (sha256 of each uncompressed tar), ``architecture`` and ``os``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import tarfile
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

_BLOCK = 512  # tar block
# A layer's fixed tar cost: the directory's header, the two files' headers, the small
# file's one block of content, and the two zero blocks that end the archive.
_TAR_OVERHEAD = 6 * _BLOCK


@dataclass(frozen=True, slots=True)
class Blob:
    """Content a registry serves: a layer, a config or a manifest."""

    media_type: str
    data: bytes
    _digest: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Hashed once: layers can be large and the digest is asked for often.
        object.__setattr__(self, "_digest", "sha256:" + hashlib.sha256(self.data).hexdigest())

    def __repr__(self) -> str:
        return f"Blob({self.media_type}, {self._digest}, {len(self.data)} bytes)"

    @property
    def digest(self) -> str:
        return self._digest

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self) -> dict[str, Any]:
        """The OCI descriptor pointing at this blob."""
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class Image:
    """A single-platform image (linux/amd64): its manifest, config and layers."""

    manifest: Blob
    config: Blob
    layers: tuple[Blob, ...]
    diff_ids: tuple[str, ...]
    """sha256 of each layer's uncompressed tar, in layer order."""

    def blobs(self) -> dict[str, Blob]:
        """Config and layers by digest (what the blobs endpoint serves)."""
        return {blob.digest: blob for blob in (self.config, *self.layers)}

    @property
    def size(self) -> int:
        """Bytes of all layers, as they travel."""
        return sum(layer.size for layer in self.layers)

    @property
    def manifest_digest(self) -> str:
        return self.manifest.digest


def build_image(layer_sizes: list[int], seed: int = 1, *, oci: bool = True, compress: bool = True) -> Image:
    """An image with one layer per entry of ``layer_sizes`` (bytes, approximately: a layer
    is never smaller than its tar headers), deterministic for a given ``seed``."""
    if not layer_sizes:
        raise ValueError("an image needs at least one layer")
    if any(size < 0 for size in layer_sizes):
        raise ValueError("layer sizes cannot be negative")
    if oci:
        manifest_type, config_type = OCI_MANIFEST, OCI_CONFIG
        layer_type = OCI_LAYER_GZIP if compress else OCI_LAYER
    else:
        manifest_type, config_type = DOCKER_MANIFEST, DOCKER_CONFIG
        layer_type = DOCKER_LAYER_GZIP if compress else DOCKER_LAYER
    layers: list[Blob] = []
    diff_ids: list[str] = []
    for index, size in enumerate(layer_sizes):
        tar = _layer_tar(index, size, seed)
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        # Level 0 (stored blocks): the payload is random and would not shrink anyway, and
        # deflating it costs ~3 s per 64 MiB for nothing. Still a valid gzip stream.
        data = gzip.compress(tar, compresslevel=0, mtime=0) if compress else tar
        layers.append(Blob(layer_type, data))
    config = Blob(
        config_type,
        _canonical(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
                "history": [{"created_by": f"swarmpull loadtest layer {i}"} for i in range(len(layers))],
            }
        ),
    )
    manifest = Blob(
        manifest_type,
        _canonical(
            {
                "schemaVersion": 2,
                "mediaType": manifest_type,
                "config": config.descriptor(),
                "layers": [layer.descriptor() for layer in layers],
            }
        ),
    )
    return Image(manifest, config, tuple(layers), tuple(diff_ids))


def build_index(images: dict[str, Image]) -> Blob:
    """An OCI index of ``images`` by platform (``"linux/amd64"``, ``"linux/arm64/v8"``)."""
    entries = []
    for platform, image in images.items():
        os_, arch, *variant = platform.split("/")
        where = {"os": os_, "architecture": arch, **({"variant": variant[0]} if variant else {})}
        entries.append({**image.manifest.descriptor(), "platform": where})
    return Blob(OCI_INDEX, _canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}))


def _canonical(document: dict[str, Any]) -> bytes:
    """JSON with sorted keys and no spaces: the same document always has the same digest."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _layer_tar(index: int, size: int, seed: int) -> bytes:
    """A tar of ``size`` bytes or a little more: directory ``layer-<index>/`` with a small
    text file and a file of random bytes.

    Written block by block rather than with ``TarFile``, which pads every archive to
    10 KiB records and so could not make a small layer small.
    """
    payload_size = max(0, size - _TAR_OVERHEAD)
    payload_size -= payload_size % _BLOCK  # the payload's padding would overshoot
    payload = random.Random(seed + index).randbytes(payload_size)
    note = f"swarmpull loadtest image, seed {seed}, layer {index}\n".encode()
    directory = f"layer-{index}"
    parts = [_header(directory, tarfile.DIRTYPE, 0o755, 0)]
    for name, content in (("about.txt", note), ("random.bin", payload)):
        parts.append(_header(f"{directory}/{name}", tarfile.REGTYPE, 0o644, len(content)))
        parts.append(content)
        parts.append(b"\0" * (-len(content) % _BLOCK))
    parts.append(b"\0" * (2 * _BLOCK))
    return b"".join(parts)


def _header(name: str, kind: bytes, mode: int, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.mtime = 0  # fixed, so the same seed gives the same bytes
    return info.tobuf(tarfile.PAX_FORMAT)


async def push_image(
    session: aiohttp.ClientSession, registry_url: str, repository: str, tag: str, image: Image
) -> None:
    """Push ``image`` as ``repository:tag``: each blob in one PUT (skipped when the registry
    has it), then the manifest. RuntimeError on any answer the flow does not expect."""
    base = registry_url.rstrip("/")
    for blob in (*image.layers, image.config):
        await _push_blob(session, base, repository, blob)
    url = f"{base}/v2/{repository}/manifests/{tag}"
    headers = {"Content-Type": image.manifest.media_type}
    async with session.put(url, data=image.manifest.data, headers=headers) as resp:
        await _expect(resp, 201, f"manifest PUT {repository}:{tag}")
        stored = resp.headers.get("Docker-Content-Digest")
        if stored is not None and stored != image.manifest_digest:
            raise RuntimeError(
                f"registry stored manifest {repository}:{tag} as {stored}, expected {image.manifest_digest}"
            )


async def _push_blob(session: aiohttp.ClientSession, base: str, repository: str, blob: Blob) -> None:
    async with session.head(f"{base}/v2/{repository}/blobs/{blob.digest}") as resp:
        if resp.status == 200:
            return
        if resp.status != 404:
            await _expect(resp, 404, f"blob HEAD {blob.digest}")
    async with session.post(f"{base}/v2/{repository}/blobs/uploads/", data=b"") as resp:
        await _expect(resp, 202, f"upload POST for {blob.digest}")
        location = resp.headers.get("Location")
        if not location:
            raise RuntimeError(f"upload POST for {blob.digest}: 202 without a Location header")
    # The Location may be relative and already carries a query string (the upload state),
    # which must reach the registry byte for byte: hence encoded=True.
    upload = str(URL(base).join(URL(location, encoded=True)))
    separator = "&" if "?" in upload else "?"
    put_url = URL(f"{upload}{separator}digest={blob.digest}", encoded=True)
    headers = {"Content-Type": "application/octet-stream"}
    async with session.put(put_url, data=blob.data, headers=headers) as resp:
        await _expect(resp, 201, f"blob PUT {blob.digest}")


async def _expect(resp: aiohttp.ClientResponse, status: int, what: str) -> None:
    if resp.status != status:
        body = (await resp.read())[:500].decode(errors="replace")
        raise RuntimeError(f"{what}: registry answered {resp.status}, expected {status}: {body}")
