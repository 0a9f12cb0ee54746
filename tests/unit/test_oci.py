"""The OCI vocabulary: manifests' references, platforms, image references, hosts."""

from __future__ import annotations

import json

import pytest

from loadtest.image import build_image, build_index
from swarmpull.core.digest import Digest
from swarmpull.core.oci import (
    OCI_INDEX,
    ImageReference,
    Platform,
    accept_key,
    check_host,
    parse_manifest,
    select_platform,
)

AMD, ARM = build_image([1000], seed=1), build_image([1000], seed=2, oci=False)
INDEX = build_index({"linux/amd64": AMD, "linux/arm64/v8": ARM})


def test_an_image_manifest_lists_its_config_and_layers():
    parsed = parse_manifest(AMD.manifest.data)
    assert not parsed.is_index
    assert [str(d.digest) for d in parsed.blobs] == [AMD.config.digest, AMD.layers[0].digest]
    assert parsed.blobs[1].size == AMD.layers[0].size
    assert parsed.blobs[1].media_type == AMD.layers[0].media_type


def test_an_index_lists_manifests_by_platform():
    parsed = parse_manifest(INDEX.data)
    assert parsed.is_index and parsed.media_type == OCI_INDEX
    assert str(select_platform(parsed, Platform.parse("linux/amd64")).digest) == AMD.manifest_digest
    assert str(select_platform(parsed, Platform.parse("linux/arm64")).digest) == ARM.manifest_digest
    assert str(select_platform(parsed, Platform.parse("linux/arm64/v8")).digest) == ARM.manifest_digest
    with pytest.raises(ValueError, match="no manifest for linux/s390x"):
        select_platform(parsed, Platform.parse("linux/s390x"))


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b'{"schemaVersion": 2}',
        json.dumps({"mediaType": OCI_INDEX, "manifests": "x"}).encode(),
        json.dumps({"config": {"digest": "sha256:x", "size": 1}, "layers": []}).encode(),
        json.dumps({"config": {"digest": "sha256:" + "a" * 64, "size": -1}, "layers": []}).encode(),
        json.dumps({"config": {"digest": "sha256:" + "a" * 64, "size": True}, "layers": []}).encode(),
        b"[" * 100_000 + b"]" * 100_000,  # past the parser's depth: RecursionError before
    ],
)
def test_what_is_not_a_manifest_is_a_value_error(data):
    with pytest.raises(ValueError):
        parse_manifest(data, "application/vnd.oci.image.manifest.v1+json")


@pytest.mark.parametrize(
    ("text", "host", "name", "tag", "digest"),
    [
        ("alpine", "docker.io", "alpine", "latest", None),
        ("bitnami/redis:7", "docker.io", "bitnami/redis", "7", None),
        ("127.0.0.1:5000/team/app:v1", "127.0.0.1:5000", "team/app", "v1", None),
        ("ghcr.io/org/app@sha256:" + "a" * 64, "ghcr.io", "org/app", None, "a" * 64),
        ("localhost/app:1.0@sha256:" + "b" * 64, "localhost", "app", "1.0", "b" * 64),
    ],
)
def test_image_references_parse_as_docker_reads_them(text, host, name, tag, digest):
    ref = ImageReference.parse(text)
    assert (ref.host, ref.name, ref.tag) == (host, name, tag)
    assert ref.digest == (Digest(digest) if digest else None)
    assert ref.reference == (f"sha256:{digest}" if digest else tag)


@pytest.mark.parametrize("text", ["", "UPPER/app", "app:bad tag", "app@sha256:123", "a//b"])
def test_bad_image_references_are_value_errors(text):
    with pytest.raises(ValueError):
        ImageReference.parse(text)


def test_accept_headers_compare_as_sets_of_types():
    assert accept_key("b/x, a/y;q=0.5") == accept_key("A/Y,b/x") == "a/y,b/x"
    assert accept_key("") == "*/*"


def test_hosts():
    assert check_host(" Registry.Local:5000 ") == "registry.local:5000"
    for bad in ("evil.com/path", "a b", "host:port", ""):
        with pytest.raises(ValueError):
            check_host(bad)
