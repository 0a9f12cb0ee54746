"""Test kit: a node (peer + proxy) on loopback."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from peer.config import PeerConfig
from registry_proxy.config import ProxyConfig
from swarmpull.app.node import NodeDaemon
from swarmpull.edges.http import HostPort
from swarmpull.edges.registry import RegistryOptions

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
    )
    proxy = ProxyConfig(listen=LOOPBACK, registry=RegistryOptions(insecure_registries=frozenset(insecure)))
    node = NodeDaemon(dataclasses.replace(config, **peer), proxy)
    await node.start()
    return node
