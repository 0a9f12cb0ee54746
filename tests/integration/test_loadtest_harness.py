"""A small surge on real sockets: every node verified, every registry byte counted, and
the same surge told again from the events its daemons wrote."""

from __future__ import annotations

from loadtest.harness import SurgeConfig, run_surge
from loadtest.image import build_image
from loadtest.replay import summarize

KiB = 1024


async def test_twenty_nodes_pull_through_the_swarm_and_straight_from_the_registry(tmp_path):
    config = SurgeConfig(
        nodes=20,
        image_size=512 * KiB,
        layers=2,
        piece_size=32 * KiB,
        node_bandwidth=2e6,
        registry_bandwidth=4e6,
        mode="both",
        workers=2,
        events_dir=tmp_path,
    )
    image = build_image(config.layer_sizes(), seed=config.seed)
    size = image.size + image.config.size  # the layers and the config blob
    p2p, direct = await run_surge(config)

    assert (p2p.completed, p2p.failed) == (20, 0)  # each node checked every blob's digest
    assert p2p.image_size == size
    assert p2p.registry_egress == size  # each blob left the registry once
    assert p2p.sources["peer"] + p2p.sources["seed"] == 20 * size
    assert p2p.sources["upstream"] == 0
    # The nodes served one another. How much more than the seed depends on the machine's
    # load: workers starved of CPU leave more to the seed (on a shared 2-core machine the
    # seed sent up to 60%), so the test asserts only that the swarm carried real weight.
    assert p2p.sources["peer"] >= 2 * size
    assert p2p.extra["supernode calls"] > 0
    # The egress series runs on the registry's clock, from the start to the end.
    assert p2p.egress_timeline[0][0] < 0.5 and p2p.egress_timeline[-1][1] == size
    assert all(a <= b for (_, a), (_, b) in zip(p2p.egress_timeline, p2p.egress_timeline[1:], strict=False))

    # The events of the supernode and of both workers tell the same surge.
    told = summarize(sorted(tmp_path.glob("*.jsonl")))
    assert sorted(p.name for p in tmp_path.glob("*.jsonl")) == [
        "supernode.jsonl",
        "worker-0.jsonl",
        "worker-1.jsonl",
    ]
    assert (told.nodes, told.completed, told.failed) == (20, 20, 0)
    assert told.registry_egress == p2p.registry_egress
    assert told.image_size == size
    assert {k: told.sources[k] for k in ("peer", "seed")} == {k: p2p.sources[k] for k in ("peer", "seed")}
    assert max(told.completion_times) <= max(p2p.completion_times)  # from each node's first open

    assert (direct.completed, direct.failed) == (20, 0)
    assert direct.registry_egress == 20 * size  # what an operator has without swarmpull
    assert direct.sources == {"upstream": 20 * size}
    assert direct.registry_requests["GET blobs"] == 20 * len(image.blobs())  # each node, each blob
    assert direct.egress_timeline[-1][1] == 20 * size
    assert p2p.bound < direct.bound
