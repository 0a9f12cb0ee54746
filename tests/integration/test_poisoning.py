"""Task poisoning over loopback: a requester that names a lying or hostile upstream for a
digest others pull cannot get its bytes into their stores, their Range reads or their
credentials (issue 16)."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import pytest
from aiohttp import web

from loadtest.image import build_image
from loadtest.origin_server import Fault
from loadtest.registry import MiniRegistry
from supernode.seed_task import TaskState
from swarmpull.core.blobs import BlobRequest, DownloadFailed
from swarmpull.core.digest import Digest
from swarmpull.edges.http import HostPort, start_site
from tests.integration.conftest import pieces
from tests.kit.nodes import start_node

KiB, MiB = 1024, 1024 * 1024


async def until(condition, what: str, limit: float = 30.0) -> None:
    """Wait for ``condition()``; the limit only keeps a broken run from hanging."""
    async with asyncio.timeout(limit):
        while not condition():
            await asyncio.sleep(0.02)
    assert condition(), what


async def test_a_lying_upstream_leaves_no_piece_anywhere_and_an_honest_url_pulls_afresh(swarm, upstream):
    data = os.urandom(2 * MiB)
    digest = Digest.of(data)
    liar = upstream.add("liar/layer", os.urandom(len(data)))  # right size, wrong bytes
    honest = upstream.add("honest/layer", data)
    upstream.rate = 4 * MiB  # slow enough that peers take pieces before the digest is known
    supernode = await swarm.start_supernode(piece_size=64 * KiB, failed_task_ttl=0.5)
    peers = await swarm.add_peers(3)
    poisoned = BlobRequest(liar, digest)
    downloads = [p.ensure(poisoned) for p in peers]
    for download in downloads:
        with pytest.raises(DownloadFailed):
            await download.wait_complete()
    assert pieces(peers, "verified") > 0  # the liar's pieces did reach the peers first
    await until(lambda: all(p.store.get(poisoned.task_id) is None for p in peers), "pieces dropped")
    assert supernode.store.get(poisoned.task_id) is None

    # The liar is not read again for this digest, even once the failure has expired.
    await until(lambda: poisoned.task_id not in supernode.service.tasks, "the failed task expired")
    with pytest.raises(DownloadFailed, match="does not match"):
        await peers[0].ensure(poisoned).wait_complete()
    assert upstream.requests["/liar/layer"] == 1

    # An honest URL for the same digest: every peer pulls it from nothing, correctly.
    upstream.rate = None
    request = BlobRequest(honest, digest)
    downloads = [p.ensure(request) for p in peers]
    for peer, download in zip(peers, downloads, strict=True):
        blob = await download.wait_complete()
        assert "local" not in download.sources  # nothing of the lie was reused
        assert (peer.config.data_dir / "blobs" / f"{blob.task_id}.data").read_bytes() == data
    assert upstream.bytes_by_path["/honest/layer"] == len(data)  # read whole, once


async def test_a_range_read_through_the_proxy_never_gets_a_poisoned_byte(swarm, upstream, tmp_path):
    registry = MiniRegistry()
    await registry.start()
    image = build_image([2 * MiB], seed=5)
    registry.add("app", "v1", image)
    layer = image.layers[0]
    liar = upstream.add("liar/layer", os.urandom(len(layer.data)))
    upstream.rate = 2 * MiB
    supernode = await swarm.start_supernode(piece_size=64 * KiB, insecure=(registry.host,))
    (attacker,) = await swarm.add_peers(1)
    victim = await start_node(tmp_path / "victim", (supernode.url,), (registry.host,))
    try:
        attack = attacker.ensure(BlobRequest(liar, Digest.parse(layer.digest)))
        task_id = attack.task_id
        await until(
            lambda: (
                (t := supernode.service.tasks.get(task_id)) is not None
                and t.blob is not None
                and t.blob.verified_count > 4
            ),
            "the seed holds pieces of the lie",
        )
        first, last = 100_000, 700_000  # within pieces the seed already signed
        url = f"{victim.proxy.url}/v2/app/blobs/{layer.digest}?ns={registry.host}"
        headers = {"Range": f"bytes={first}-{last}"}
        async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
            body = await resp.read()
            status = resp.status
        assert status == 206 or status >= 400
        if status == 206:
            assert body == layer.data[first : last + 1]
        with pytest.raises(DownloadFailed):
            await attack.wait_complete()
        await until(lambda: victim.peer.store.get(task_id) is None, "the victim kept no piece of the lie")
    finally:
        await victim.stop()
        await registry.stop()


class RecordingUpstream:
    """An attacker's upstream: answers 503 to everything and records the headers it got."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("GET", "/{path:.*}", self._handle)
        self._runner, bound = await start_site(app, HostPort("127.0.0.1", 0))
        self.url = bound.url()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        self.seen.append(dict(request.headers))
        return web.Response(status=503, headers={"Retry-After": "0"})


async def test_a_requesters_credentials_never_reach_another_requesters_url(swarm, upstream):
    secret = "victim-token-9d2c"
    data = os.urandom(MiB)
    digest = Digest.of(data)
    victim_url = upstream.add("private/layer", data)
    upstream.faults["/private/layer"] = Fault(token=secret)
    attacker_upstream = RecordingUpstream()
    await attacker_upstream.start()
    try:
        await swarm.start_supernode(piece_size=64 * KiB)
        attacker, victim = await swarm.add_peers(2)
        attack = attacker.ensure(BlobRequest(f"{attacker_upstream.url}/layer", digest))
        await until(lambda: attacker_upstream.seen, "the attacker's upstream was asked")
        pull = victim.ensure(BlobRequest(victim_url, digest, {"Authorization": f"Bearer {secret}"}))
        blob = await pull.wait_complete()
        assert (victim.config.data_dir / "blobs" / f"{blob.task_id}.data").read_bytes() == data
        # The same digest, but a private blob: the attacker's URL (and no token) proves no
        # pull rights, so it gets no capability and no byte (issue 16, attack 2).
        with pytest.raises(DownloadFailed) as refused:
            await attack.wait_complete()
        assert refused.value.denied
        for headers in attacker_upstream.seen:
            assert secret not in " ".join(headers.values())
            assert "Authorization" not in headers
    finally:
        await attacker_upstream.stop()


async def test_a_read_resumed_from_another_requesters_url_blames_neither(swarm, upstream):
    """The liar's answer breaks off; the read resumes from an honest requester's URL, and
    the whole digest fails. Nobody can tell which answer lied: the honest URL must not be
    refused for it (a liar could otherwise get any requester's URL banned)."""
    data = os.urandom(2 * MiB)
    digest = Digest.of(data)
    liar = upstream.add("liar/layer", os.urandom(len(data)))
    upstream.faults["/liar/layer"] = Fault(cut_after=MiB)
    honest = upstream.add("honest/layer", data)
    upstream.rate = 4 * MiB
    # The failed task is remembered long enough for both to hear of the failure: one that
    # asked after it expired would open it afresh and start another mixed read.
    supernode = await swarm.start_supernode(piece_size=64 * KiB, failed_task_ttl=5.0)
    attacker, victim = await swarm.add_peers(2)
    attack = attacker.ensure(BlobRequest(liar, digest))
    await until(lambda: upstream.requests["/liar/layer"] == 1, "the liar was asked")
    pull = victim.ensure(BlobRequest(honest, digest))  # its URL is the newest: the retry's
    for download in (attack, pull):
        with pytest.raises(DownloadFailed):
            await download.wait_complete()
    assert upstream.requests["/honest/layer"] == 1  # the read resumed from the honest URL
    await until(lambda: digest_task(digest) not in supernode.service.tasks, "the failed task expired")
    upstream.rate = None
    blob = await victim.ensure(BlobRequest(honest, digest)).wait_complete()
    assert (victim.config.data_dir / "blobs" / f"{blob.task_id}.data").read_bytes() == data


async def test_a_liar_that_keeps_asking_cannot_keep_an_honest_requester_from_its_blob(swarm, upstream):
    """After a mixed read failed (nobody blamed), the liar asks again, with a URL that
    breaks off, around the honest requester's pull, so its URL is the newest at the retry.
    The next read hands out no piece before its whole digest matched, and a retry skips a
    URL that broke off: it starts again from the first byte at the honest URL, and the
    seed holds the blob (before, every such read mixed URLs and failed again)."""
    data = os.urandom(2 * MiB)
    digest = Digest.of(data)
    liar = upstream.add("liar/layer", os.urandom(len(data)))
    honest = upstream.add("honest/layer", data)
    supernode = await swarm.start_supernode(piece_size=64 * KiB, failed_task_ttl=2.0)
    attacker, accomplice, victim = await swarm.add_peers(3)
    task_id = digest_task(digest)

    upstream.rate = 4 * MiB
    upstream.faults["/liar/layer"] = Fault(cut_after=MiB)
    first = attacker.ensure(BlobRequest(liar, digest))
    await until(lambda: upstream.requests["/liar/layer"] == 1, "the liar was asked")
    pull = victim.ensure(BlobRequest(honest, digest))
    for download in (first, pull):
        with pytest.raises(DownloadFailed):
            await download.wait_complete()  # a mixed read: it failed, nobody was blamed
    await until(lambda: task_id not in supernode.service.tasks, "the failed task expired")

    peers = [attacker, accomplice, victim]
    verified = pieces(peers, "verified")
    upstream.rate = MiB  # the liar breaks off after a second: time for everyone to ask
    upstream.faults["/liar/layer"] = Fault(cut_after=MiB)
    again = attacker.ensure(BlobRequest(liar, digest))
    await until(lambda: upstream.requests["/liar/layer"] == 2, "the liar was asked again")
    pull = victim.ensure(BlobRequest(honest, digest))
    await until(lambda: len(supernode.service.tasks[task_id].sources) == 2, "the victim asked")
    late = accomplice.ensure(BlobRequest(liar, digest))  # the liar's URL is the newest again
    await until(lambda: supernode.service.tasks[task_id].sources[0].url == liar, "the liar asked last")
    assert pieces(peers, "verified") == verified  # no piece handed out before the digest

    blob = await pull.wait_complete()
    assert (victim.config.data_dir / "blobs" / f"{blob.task_id}.data").read_bytes() == data
    assert supernode.service.tasks[task_id].state is TaskState.SEEDED
    assert upstream.requests["/liar/layer"] == 2  # the retry did not go back to the liar
    for download in (again, late):  # the liar's requests get the real blob, from the seed
        assert (await download.wait_complete()).meta.digest == str(digest)


def digest_task(digest: Digest) -> str:
    return BlobRequest("http://x.invalid/", digest).task_id


async def test_pieces_kept_by_a_peer_that_left_a_poisoned_read_are_not_reused(swarm, upstream):
    """A peer that left before the read failed never heard of the failure and kept the
    lie's pieces, with statements the supernode signed. The next read of the blob signs
    with a key of its own: the peer drops what it held, and pulls the blob right."""
    data = os.urandom(2 * MiB)
    digest = Digest.of(data)
    liar = upstream.add("liar/layer", os.urandom(len(data)))
    honest = upstream.add("honest/layer", data)
    upstream.rate = 2 * MiB
    supernode = await swarm.start_supernode(piece_size=64 * KiB, failed_task_ttl=0.5)
    attacker, victim = await swarm.add_peers(2)
    attack = attacker.ensure(BlobRequest(liar, digest))
    await until(lambda: upstream.requests["/liar/layer"] == 1, "the liar is being read")
    with victim.requested(BlobRequest(honest, digest)) as left:  # a client that goes away
        await until(lambda: left.blob is not None and left.blob.verified_count >= 4, "pieces taken")
    kept = victim.store.get(left.task_id)
    assert kept is not None and kept.verified_count >= 4  # the lie's pieces, kept to resume
    with pytest.raises(DownloadFailed):
        await attack.wait_complete()
    await until(lambda: left.task_id not in supernode.service.tasks, "the failed task expired")

    upstream.rate = None
    download = victim.ensure(BlobRequest(honest, digest))
    blob = await download.wait_complete()
    assert (victim.config.data_dir / "blobs" / f"{blob.task_id}.data").read_bytes() == data
    assert "local" not in download.sources or download.sources["local"] == 0
