"""The supernode's registry mirror against an in-memory registry and a FakeClock: how
many requests reach the registry, whose credential decides what, and what still answers
while the registry is out."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field

import pytest

from loadtest.image import build_image, build_index
from supernode.registry_books import BooksConfig, RegistryBooks
from supernode.registry_mirror import RegistryMirror
from swarmpull.core.clock import FakeClock
from swarmpull.core.digest import Digest
from swarmpull.core.oci import ACCEPT_ALL, Descriptor
from swarmpull.core.registry_questions import BlobQuestion, ManifestQuestion, NotAnswered, RegistryRefused
from swarmpull.edges.registry import Credential, Manifest, RegistryError, Resolved, Upstream

IMAGE = build_image([1000, 2000], seed=41)
OTHER = build_image([500], seed=42)
INDEX = build_index({"linux/amd64": IMAGE, "linux/arm64": OTHER})
HOST = "registry.test"
MIB = 1 << 20


@dataclass
class FakeRegistry:
    """The registry's side of ``Registry``: repositories by name, and who may pull them
    (credential headers; None is anonymous). ``out`` makes every call an outage."""

    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)  # name -> tag -> manifest
    readers: dict[str, set[str | None]] = field(default_factory=dict)
    out: RegistryError | None = None
    calls: Counter[str] = field(default_factory=Counter)
    heard: list[str | None] = field(default_factory=list)  # the credential of each call

    def upstream(self, host: str | None) -> Upstream:
        if host and "/" in host:
            raise ValueError(f"invalid registry host {host!r}")
        return Upstream(host or HOST, f"https://{host or HOST}")

    def _enter(self, what: str, name: str, credential: Credential) -> dict[str, bytes]:
        self.calls[what] += 1
        self.heard.append(credential.header)
        if self.out is not None:
            raise self.out
        if credential.header not in self.readers.get(name, {None}):
            raise RegistryError(401, "UNAUTHORIZED", "no", challenge='Basic realm="test"')
        return self.repos.get(name, {})

    def _find(self, repo: dict[str, bytes], reference: str) -> bytes:
        data = repo.get(reference) or next((d for d in repo.values() if str(Digest.of(d)) == reference), None)
        if data is None:
            raise RegistryError(404, "MANIFEST_UNKNOWN", f"{reference} unknown")
        return data

    async def resolve(self, upstream, name, tag, accept, credential) -> Resolved:
        data = self._find(self._enter("HEAD manifest", name, credential), tag)
        return Resolved(_descriptor(data))

    async def head(self, upstream, name, kind, reference, credential) -> Descriptor:
        repo = self._enter(f"HEAD {kind}", name, credential)
        if kind == "manifests":
            return _descriptor(self._find(repo, reference))
        blobs = {d: b for m in repo.values() for d, b in _blobs(m).items()}
        if reference not in blobs:
            raise RegistryError(404, "BLOB_UNKNOWN", "unknown")
        return blobs[reference]

    async def manifest(self, upstream, name, digest, accept, credential) -> Manifest:
        data = self._find(self._enter("GET manifest", name, credential), str(digest))
        return Manifest(_descriptor(data), data)


def _descriptor(data: bytes) -> Descriptor:
    kind = INDEX.media_type if data == INDEX.data else IMAGE.manifest.media_type
    return Descriptor(Digest.of(data), kind, len(data))


def _blobs(manifest: bytes) -> dict[str, Descriptor]:
    image = IMAGE if manifest == IMAGE.manifest.data else OTHER
    return {d: Descriptor(Digest.parse(d), b.media_type, b.size) for d, b in image.blobs().items()}


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def registry():
    return FakeRegistry(
        repos={
            "team/app": {"v1": IMAGE.manifest.data},
            "team/multi": {"v1": INDEX.data, "amd": IMAGE.manifest.data, "arm": OTHER.manifest.data},
            "team/private": {"v1": OTHER.manifest.data},
        },
        readers={"team/private": {"Basic alice", "Basic bob"}},
    )


@pytest.fixture
async def mirror(registry, clock):
    books = RegistryBooks(BooksConfig(tag_ttl=5.0, tag_stale=3600.0, auth_ttl=60.0, manifest_bytes=MIB))
    mirror = RegistryMirror(registry, books, clock)
    yield mirror
    await mirror.stop()


def manifest_q(reference: str, repo: str = "team/app", auth: str | None = None, head: bool = False):
    return ManifestQuestion(HOST, repo, reference, ACCEPT_ALL, head, auth)


def blob_q(digest: str, repo: str = "team/app", auth: str | None = None):
    return BlobQuestion(HOST, repo, Digest.parse(digest), auth)


async def test_a_surge_costs_one_resolution_and_one_manifest(mirror, registry):
    heads = await asyncio.gather(*(mirror.manifest(manifest_q("v1", head=True)) for _ in range(200)))
    assert {str(h.descriptor.digest) for h in heads} == {IMAGE.manifest_digest}
    assert all(h.data is None and not h.stale for h in heads)
    gets = await asyncio.gather(*(mirror.manifest(manifest_q(IMAGE.manifest_digest)) for _ in range(200)))
    assert {g.data for g in gets} == {IMAGE.manifest.data}
    for digest, blob in IMAGE.blobs().items():
        assert (await mirror.blob(blob_q(digest))).size == blob.size
    assert registry.calls == {"HEAD manifest": 1, "GET manifest": 1}


async def test_a_tag_is_resolved_again_after_its_ttl(mirror, registry, clock):
    await mirror.manifest(manifest_q("v1", head=True))
    clock.advance(4.9)
    await mirror.manifest(manifest_q("v1", head=True))
    assert registry.calls["HEAD manifest"] == 1
    clock.advance(0.2)
    await asyncio.gather(*(mirror.manifest(manifest_q("v1", head=True)) for _ in range(50)))
    assert registry.calls["HEAD manifest"] == 2


async def test_an_index_and_its_platform_manifests(mirror, registry):
    answer = await mirror.manifest(manifest_q("v1", "team/multi"))
    assert answer.data == INDEX.data and answer.descriptor.media_type == INDEX.media_type
    child = await mirror.manifest(manifest_q(OTHER.manifest_digest, "team/multi"))
    assert child.data == OTHER.manifest.data
    assert registry.calls == {"HEAD manifest": 1, "GET manifest": 2}  # the index, then the child


async def test_each_credential_is_checked_once_and_never_stands_for_another(mirror, registry, clock):
    private = "team/private"
    with pytest.raises(RegistryRefused) as caught:
        await mirror.manifest(manifest_q("v1", private))  # anonymous
    assert caught.value.status == 401 and caught.value.challenge == 'Basic realm="test"'
    await asyncio.gather(*(mirror.manifest(manifest_q("v1", private, "Basic alice")) for _ in range(20)))
    assert registry.heard.count("Basic alice") == 2  # one HEAD for her rights, one GET
    with pytest.raises(RegistryRefused):  # alice's rights open nothing to mallory
        await mirror.manifest(manifest_q(OTHER.manifest_digest, private, "Basic mallory"))
    with pytest.raises(RegistryRefused):
        await mirror.blob(blob_q(OTHER.layers[0].digest, private, "Basic mallory"))
    with pytest.raises(RegistryRefused):  # nor to anonymous
        await mirror.manifest(manifest_q(OTHER.manifest_digest, private))
    assert (await mirror.manifest(manifest_q("v1", private, "Basic bob"))).data == OTHER.manifest.data
    assert registry.heard.count("Basic bob") == 1  # his own HEAD; the manifest was held
    clock.advance(61)  # alice's check expired: checked again, once
    layer = blob_q(OTHER.layers[0].digest, private, "Basic alice")
    await asyncio.gather(*(mirror.blob(layer) for _ in range(9)))
    assert registry.heard.count("Basic alice") == 3


async def test_what_anonymous_may_pull_anyone_may(mirror, registry):
    await mirror.manifest(manifest_q("v1"))
    calls = sum(registry.calls.values())
    answer = await mirror.manifest(manifest_q(IMAGE.manifest_digest, auth="Bearer someone"))
    assert answer.data == IMAGE.manifest.data
    assert sum(registry.calls.values()) == calls  # a public repository: no check needed


async def test_content_is_served_only_for_the_repository_it_was_seen_in(mirror, registry):
    await mirror.manifest(manifest_q("v1", "team/private", "Basic alice"))
    # OTHER's manifest is in team/private and team/multi; asked for in team/app, where it
    # is not, the registry is asked (with the asker's credential) and says so.
    with pytest.raises(RegistryRefused) as caught:
        await mirror.manifest(manifest_q(OTHER.manifest_digest, "team/app"))
    assert caught.value.status == 404


async def test_an_outage_serves_what_the_cluster_holds(mirror, registry, clock, caplog):
    await mirror.manifest(manifest_q("v1"))
    clock.advance(10)  # the resolution is no longer fresh
    registry.out = RegistryError(502, "UNKNOWN", "unreachable", outage=True)
    with caplog.at_level(logging.WARNING, logger="supernode.registry_mirror"):
        answers = await asyncio.gather(*(mirror.manifest(manifest_q("v1")) for _ in range(100)))
    assert {a.data for a in answers} == {IMAGE.manifest.data} and all(a.stale for a in answers)
    assert registry.calls["HEAD manifest"] == 2  # one try; then the registry is left alone
    assert [r.message for r in caplog.records if "resolved 10s ago" in r.message]  # the warning, once
    assert len(caplog.records) == 1
    by_digest = await mirror.manifest(manifest_q(IMAGE.manifest_digest))
    assert by_digest.data == IMAGE.manifest.data
    for digest in IMAGE.blobs():
        await mirror.blob(blob_q(digest))
    clock.advance(3600)  # past --tag-stale: a tag is no longer answered
    with pytest.raises(NotAnswered):
        await mirror.manifest(manifest_q("v1"))
    assert (await mirror.manifest(manifest_q(IMAGE.manifest_digest))).stale  # by digest: always
    with pytest.raises(NotAnswered):  # never resolved, never held: the node asks the registry
        await mirror.manifest(manifest_q("v1", "team/multi"))


async def test_a_rate_limit_is_honoured_and_the_surge_goes_on(mirror, registry, clock):
    await mirror.manifest(manifest_q("v1"))
    registry.out = RegistryError(429, "TOOMANYREQUESTS", "slow down", outage=True, retry_after=30)
    clock.advance(6)
    assert (await mirror.manifest(manifest_q("v1"))).stale
    registry.out = None
    clock.advance(20)  # Retry-After has not passed: still left alone
    assert (await mirror.manifest(manifest_q("v1"))).stale
    assert registry.calls["HEAD manifest"] == 2
    clock.advance(11)
    assert not (await mirror.manifest(manifest_q("v1"))).stale
    assert registry.calls["HEAD manifest"] == 3


async def test_an_unchecked_credential_gets_nothing_during_an_outage(mirror, registry):
    await mirror.manifest(manifest_q("v1", "team/private", "Basic alice"))
    registry.out = RegistryError(503, "UNKNOWN", "down", outage=True)
    with pytest.raises(NotAnswered):
        await mirror.manifest(manifest_q(OTHER.manifest_digest, "team/private", "Basic mallory"))
    with pytest.raises(NotAnswered):
        await mirror.blob(blob_q(OTHER.layers[0].digest, "team/private"))
    answer = await mirror.manifest(manifest_q(OTHER.manifest_digest, "team/private", "Basic alice"))
    assert answer.data == OTHER.manifest.data


async def test_bad_hosts_are_refused(mirror):
    with pytest.raises(RegistryRefused) as caught:
        await mirror.manifest(manifest_q("v1").__class__("bad/host", "app", "v1"))
    assert caught.value.status == 400


def test_books_forget_manifests_beyond_their_budget():
    books = RegistryBooks(BooksConfig(manifest_bytes=IMAGE.manifest.size + OTHER.manifest.size))
    for image in (IMAGE, OTHER, build_image([10], seed=43)):
        desc = _descriptor(image.manifest.data)
        books.add_manifest(HOST, "r", desc, image.manifest.data, None)
    assert books.manifest(HOST, "r", Digest.parse(IMAGE.manifest_digest)) is None  # the oldest went
    assert books.manifest(HOST, "r", Digest.parse(OTHER.manifest_digest)) == OTHER.manifest.data
    assert books.manifest(HOST, "elsewhere", Digest.parse(OTHER.manifest_digest)) is None


def test_a_manifest_makes_a_bounded_number_of_children_known():
    # A hostile registry's index of 44,000 entries pushed every other registry's contents
    # out of the one memory they share (attack round 10).
    from supernode.registry_books import MAX_CHILDREN
    from swarmpull.core.oci import ParsedManifest

    books = RegistryBooks(BooksConfig())
    children = tuple(
        Descriptor(Digest.of(b"%d" % i), "application/octet-stream", 1) for i in range(MAX_CHILDREN + 100)
    )
    index = Descriptor(Digest.of(b"index"), "application/vnd.oci.image.index.v1+json", 10)
    books.add_manifest("evil.example", "x", index, b"{}", ParsedManifest(index.media_type, children))
    known = [c for c in children if books.content("evil.example", "x", c.digest) is not None]
    assert known == list(children[:MAX_CHILDREN])
