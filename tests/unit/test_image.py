"""Images built in memory: deterministic, self-consistent, the sizes asked for."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile

import pytest

from loadtest.image import Blob, build_image


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_blob_digest_size_and_descriptor():
    blob = Blob("application/octet-stream", b"hello")
    assert blob.digest == sha256(b"hello")
    assert blob.size == 5
    assert blob.descriptor() == {"mediaType": "application/octet-stream", "digest": blob.digest, "size": 5}
    assert blob == Blob("application/octet-stream", b"hello")
    assert "hello" not in repr(Blob("x", b"hello" * 1000))  # large data stays out of logs


def test_same_seed_same_image_other_seed_other_image():
    first = build_image([10_000, 20_000], seed=3)
    again = build_image([10_000, 20_000], seed=3)
    other = build_image([10_000, 20_000], seed=4)
    assert first.manifest_digest == again.manifest_digest
    assert first.manifest.data == again.manifest.data
    assert [layer.data for layer in first.layers] == [layer.data for layer in again.layers]
    assert other.manifest_digest != first.manifest_digest
    assert not {layer.digest for layer in other.layers} & {layer.digest for layer in first.layers}


def test_layers_of_one_image_differ():
    image = build_image([50_000, 50_000, 50_000])
    assert len({layer.digest for layer in image.layers}) == 3


def test_diff_ids_are_the_sha256_of_the_uncompressed_layers():
    image = build_image([30_000, 70_000], seed=5)
    for layer, diff_id in zip(image.layers, image.diff_ids, strict=True):
        assert diff_id == sha256(gzip.decompress(layer.data))
    config = json.loads(image.config.data)
    assert config["rootfs"] == {"type": "layers", "diff_ids": list(image.diff_ids)}
    assert config["architecture"] == "amd64"
    assert config["os"] == "linux"
    assert config["config"] == {}


def test_layers_are_tars_of_one_directory_per_layer():
    image = build_image([40_000, 5_000], seed=2)
    for index, layer in enumerate(image.layers):
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer.data))) as tar:
            members = tar.getmembers()
            assert members[0].isdir() and members[0].name == f"layer-{index}"
            files = [m for m in members if m.isfile()]
            assert 1 <= len(files) <= 2
            assert all(m.name.startswith(f"layer-{index}/") for m in files)
            assert all(m.mtime == 0 for m in members)
            biggest = max(files, key=lambda m: m.size)
            assert len(tar.extractfile(biggest).read()) == biggest.size


def test_manifest_lists_config_and_layers_with_their_digests_and_sizes():
    image = build_image([25_000, 60_000, 1_000], seed=9)
    manifest = json.loads(image.manifest.data)
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == image.manifest.media_type
    assert manifest["config"] == {
        "mediaType": image.config.media_type,
        "digest": sha256(image.config.data),
        "size": len(image.config.data),
    }
    assert manifest["layers"] == [
        {"mediaType": layer.media_type, "digest": sha256(layer.data), "size": len(layer.data)}
        for layer in image.layers
    ]
    assert image.manifest_digest == sha256(image.manifest.data)
    assert set(image.blobs()) == {image.config.digest, *(layer.digest for layer in image.layers)}
    assert image.blobs()[image.config.digest] is image.config
    assert image.size == sum(len(layer.data) for layer in image.layers)


@pytest.mark.parametrize("compress", [True, False])
def test_layer_sizes_are_close_to_the_requested_ones(compress):
    sizes = [100_000, 1_000_000, 3_333_333]
    image = build_image(sizes, compress=compress)
    for layer, size in zip(image.layers, sizes, strict=True):
        assert abs(layer.size - size) <= 1024 + size // 1000, (layer.size, size)


def test_a_tiny_layer_is_still_a_valid_tar():
    image = build_image([0], compress=False)
    with tarfile.open(fileobj=io.BytesIO(image.layers[0].data)) as tar:
        assert tar.getnames()[0] == "layer-0"
    assert image.layers[0].size < 4096


def test_oci_and_docker_media_types():
    oci = build_image([1_000], oci=True)
    docker = build_image([1_000], oci=False)
    assert oci.manifest.media_type == "application/vnd.oci.image.manifest.v1+json"
    assert oci.config.media_type == "application/vnd.oci.image.config.v1+json"
    assert oci.layers[0].media_type == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert docker.manifest.media_type == "application/vnd.docker.distribution.manifest.v2+json"
    assert docker.config.media_type == "application/vnd.docker.container.image.v1+json"
    assert docker.layers[0].media_type == "application/vnd.docker.image.rootfs.diff.tar.gzip"
    assert json.loads(docker.manifest.data)["mediaType"] == docker.manifest.media_type
    # Same content either way: only the labels differ.
    assert oci.diff_ids == docker.diff_ids


def test_uncompressed_layers_are_plain_tars_whose_digest_is_the_diff_id():
    oci = build_image([20_000, 30_000], compress=False)
    docker = build_image([20_000], oci=False, compress=False)
    assert oci.layers[0].media_type == "application/vnd.oci.image.layer.v1.tar"
    assert docker.layers[0].media_type == "application/vnd.docker.image.rootfs.diff.tar"
    for layer, diff_id in zip(oci.layers, oci.diff_ids, strict=True):
        assert layer.digest == diff_id
        with tarfile.open(fileobj=io.BytesIO(layer.data), mode="r:") as tar:  # not gzip
            assert tar.getmembers()
    assert oci.diff_ids == build_image([20_000, 30_000], compress=True).diff_ids


def test_json_is_canonical():
    image = build_image([1_000])
    for blob in (image.manifest, image.config):
        document = json.loads(blob.data)
        assert blob.data == json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def test_bad_layer_sizes_are_refused():
    with pytest.raises(ValueError):
        build_image([])
    with pytest.raises(ValueError):
        build_image([10, -1])
