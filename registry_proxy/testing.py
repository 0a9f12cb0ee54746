"""Test helpers: a node (peer + proxy) on loopback, and a client that pulls like containerd."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import aiohttp

from peer.config import PeerConfig
from registry_proxy.config import ProxyConfig
from registry_proxy.node import NodeDaemon
from swarmpull.http import HostPort

LOOPBACK = HostPort("127.0.0.1", 0)
MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "*/*",
    )
)


async def start_node(
    data_dir: Path, supernodes: tuple[str, ...], insecure: tuple[str, ...] = (), **peer: Any
) -> NodeDaemon:
    """A started node: a peer on loopback and its proxy (plain HTTP to ``insecure``)."""
    config = PeerConfig(
        data_dir=data_dir,
        supernodes=supernodes,
        listen=LOOPBACK,
        api_listen=None,
        cache_size=None,
        upload_limit=None,
        download_limit=None,
        poll_interval=0.2,
    )
    proxy = ProxyConfig(listen=LOOPBACK, insecure_registries=frozenset(insecure))
    node = NodeDaemon(dataclasses.replace(config, **peer), proxy)
    await node.start()
    return node


async def pull(
    session: aiohttp.ClientSession, proxy: str, registry: str, name: str, tag: str
) -> dict[str, bytes]:
    """What containerd does through a mirror: resolve the tag, fetch the manifest by digest,
    then every blob; each checked against its digest. Returns digest -> bytes."""
    ns = {"ns": registry}
    async with session.head(
        f"{proxy}/v2/{name}/manifests/{tag}", params=ns, headers={"Accept": MANIFEST_TYPES}
    ) as r:
        r.raise_for_status()
        digest, media_type = r.headers["Docker-Content-Digest"], r.headers["Content-Type"]
    async with session.get(
        f"{proxy}/v2/{name}/manifests/{digest}", params=ns, headers={"Accept": media_type}
    ) as r:
        r.raise_for_status()
        manifest = await r.read()
    assert "sha256:" + hashlib.sha256(manifest).hexdigest() == digest
    blobs = {}
    document = json.loads(manifest)
    for descriptor in [document["config"], *document["layers"]]:
        async with session.get(f"{proxy}/v2/{name}/blobs/{descriptor['digest']}", params=ns) as r:
            r.raise_for_status()
            data = await r.read()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == descriptor["digest"]
        blobs[descriptor["digest"]] = data
    return blobs
