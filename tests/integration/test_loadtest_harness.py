"""A small surge on real sockets: every node verified, every registry byte counted."""

from __future__ import annotations

from loadtest.harness import SurgeConfig, run_surge
from loadtest.image import build_image

KiB = 1024


async def test_twenty_nodes_pull_through_the_swarm_and_straight_from_the_registry():
    config = SurgeConfig(
        nodes=20,
        image_size=512 * KiB,
        layers=2,
        piece_size=32 * KiB,
        node_bandwidth=2e6,
        registry_bandwidth=4e6,
        mode="both",
        workers=2,
    )
    image = build_image(config.layer_sizes(), seed=config.seed)
    size = image.size + image.config.size  # the layers and the config blob
    p2p, direct = await run_surge(config)

    assert (p2p.completed, p2p.failed) == (20, 0)  # each node checked every blob's digest
    assert p2p.image_size == size
    assert p2p.registry_egress == size  # each blob left the registry once
    assert p2p.sources["peer"] + p2p.sources["seed"] == 20 * size
    assert p2p.sources["upstream"] == 0
    assert p2p.sources["peer"] > p2p.sources["seed"]
    assert p2p.extra["supernode calls"] > 0
    blobs = len(image.blobs())  # O(layers) requests, not O(nodes): counted by kind
    assert p2p.registry_requests["GET manifests"] == 1 and p2p.registry_requests["GET blobs"] == blobs
    assert p2p.registry_requests["HEAD manifests"] <= 2 and "HEAD blobs" not in p2p.registry_requests

    assert (direct.completed, direct.failed) == (20, 0)
    assert direct.registry_egress == 20 * size  # what an operator has without swarmpull
    assert (
        direct.registry_requests["GET manifests"] == 20
        and direct.registry_requests["GET blobs"] == 20 * blobs
    )
    assert p2p.bound < direct.bound
