"""A node's preheat polls against the supernode's jobs, without sockets: what one answer
carries, and how many polls a node may park."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from supernode.preheat.jobs import Layer, PreheatJob
from supernode.preheat.service import POLLS_PER_NODE, Preheats, TooManyPolls
from swarmpull.core.clock import SystemClock
from swarmpull.core.digest import Digest
from swarmpull.core.preheat import MAX_LAYERS, LayerProgress, PreheatPoll, Selection, parse_preheat_work


def preheats_of(images: int, layers: int) -> Preheats:
    """Running jobs of ``images`` images of ``layers`` blobs each, every blob ready."""
    presence = SimpleNamespace(labels=lambda node: (None, None))
    capabilities = SimpleNamespace(lets_in=lambda task_id, node: False)  # no source made here
    service = SimpleNamespace(presence=presence, capabilities=capabilities)
    preheats = Preheats(service, None, None, SystemClock())
    for j in range(images):
        job = PreheatJob(f"{j:016x}", f"registry.example/app{j}:v1", "linux/amd64", Selection(), 0.0, 1e12)
        blobs = [
            Layer(Digest.of(f"{j}-{i}".encode()), 1000, "https://registry.example/x", "registry.example/x")
            for i in range(layers)
        ]
        job.resolved(blobs)
        for layer in blobs:
            layer.private = False
            job.layer_ready(layer.task_id)
        preheats._jobs[job.id] = job
    return preheats


async def test_one_answer_carries_what_a_node_reads_and_the_rest_comes_as_it_completes():
    # Forty images of thirty layers preheated together: 1,200 blobs, past what a node
    # reads in one answer (its poll loop failed on every answer, for every job).
    preheats = preheats_of(40, 30)
    first = parse_preheat_work((await preheats.poll("n1", PreheatPoll())).to_json())
    assert len(first.layers) == MAX_LAYERS
    done = [LayerProgress(blob.task_id, "complete", 1000) for blob in first.layers]
    second = parse_preheat_work((await preheats.poll("n1", PreheatPoll(done))).to_json())
    new = {blob.task_id for blob in second.layers} - {blob.task_id for blob in first.layers}
    assert len(new) == 1200 - MAX_LAYERS  # the others, now that those are held


async def test_a_node_parks_a_bounded_number_of_polls():
    # Each parked poll holds a connection the budget does not shed: one node's polls
    # took the supernode's whole budget (attack round 9).
    preheats = preheats_of(1, 1)
    version = (await preheats.poll("n1", PreheatPoll())).version
    waiting = PreheatPoll([], version, 30.0)  # nothing new: wait up to 30 s
    parked = [asyncio.create_task(preheats.poll("n1", waiting)) for _ in range(POLLS_PER_NODE)]
    await asyncio.sleep(0.01)
    with pytest.raises(TooManyPolls):
        await preheats.poll("n1", waiting)
    other = asyncio.create_task(preheats.poll("n2", waiting))  # another node may
    await asyncio.sleep(0.01)
    assert not other.done()
    preheats._change()  # news: every parked poll is answered
    assert all(work.version == version + 1 for work in await asyncio.gather(*parked, other))
    assert not len(preheats._waiting)
