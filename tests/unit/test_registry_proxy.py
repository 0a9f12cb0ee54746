"""The proxy's pure parts: request paths, upstream naming, credentials, hosts.toml."""

from __future__ import annotations

import base64
import json

import pytest

from registry_proxy import hosts
from registry_proxy.errors import OciError
from registry_proxy.paths import Kind, parse_path
from swarmpull.edges.registry import Registries
from swarmpull.edges.registry.auth import Credentials, parse_challenge

HEX = "ab" * 32


@pytest.mark.parametrize(
    ("path", "kind", "name", "reference"),
    [
        ("/v2/", Kind.BASE, "", ""),
        ("/v2", Kind.BASE, "", ""),
        ("/v2/alpine/manifests/3.20", Kind.MANIFEST, "alpine", "3.20"),
        (f"/v2/library/alpine/manifests/sha256:{HEX}", Kind.MANIFEST, "library/alpine", f"sha256:{HEX}"),
        (f"/v2/a/b/c/blobs/sha256:{HEX}", Kind.BLOB, "a/b/c", f"sha256:{HEX}"),
        (f"/v2/my-org/app_x/blobs/sha256:{HEX}", Kind.BLOB, "my-org/app_x", f"sha256:{HEX}"),
        # a repository may itself be named "blobs" or "manifests"
        ("/v2/blobs/manifests/latest", Kind.MANIFEST, "blobs", "latest"),
    ],
)
def test_paths_parse_into_validated_requests(path, kind, name, reference):
    parsed = parse_path(path)
    assert (parsed.kind, parsed.name, parsed.reference) == (kind, name, reference)
    assert parsed.by_digest == reference.startswith("sha256:")


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v2/UPPER/manifests/x", 400, "NAME_INVALID"),
        ("/v2/a//b/manifests/x", 400, "NAME_INVALID"),
        ("/v2/-lead/manifests/x", 400, "NAME_INVALID"),
        ("/v2/ok/blobs/latest", 400, "DIGEST_INVALID"),
        ("/v2/ok/blobs/sha256:abc", 400, "DIGEST_INVALID"),
        (f"/v2/ok/blobs/sha512:{HEX}{HEX}", 400, "DIGEST_INVALID"),
        ("/v2/ok/manifests/bad tag", 400, "MANIFEST_INVALID"),
        ("/v2/ok/tags/list", 405, "UNSUPPORTED"),
        ("/v1/search", 404, "NOT_FOUND"),
    ],
)
def test_bad_paths_are_clean_oci_errors(path, status, code):
    with pytest.raises(OciError) as caught:
        parse_path(path)
    assert (caught.value.status, caught.value.code) == (status, code)
    body = json.loads(caught.value.response().body)
    assert body["errors"][0]["code"] == code


def test_upstreams_follow_ns_docker_hub_naming_and_insecure_opt_in():
    registries = Registries("docker.io", frozenset({"plain.local:5000"}))
    hub = registries.resolve(None)
    assert hub.base == "https://registry-1.docker.io"
    assert hub.url("alpine", "manifests", "3") == "https://registry-1.docker.io/v2/library/alpine/manifests/3"
    assert hub.url("bitnami/redis", "blobs", "d") == "https://registry-1.docker.io/v2/bitnami/redis/blobs/d"
    ghcr = registries.resolve("ghcr.io")
    assert ghcr.url("alpine", "blobs", "d") == "https://ghcr.io/v2/alpine/blobs/d"  # no library/ there
    assert registries.resolve("plain.local:5000").base == "http://plain.local:5000"
    assert registries.resolve("other.local:5000").base == "https://other.local:5000"
    with pytest.raises(ValueError, match="invalid registry host"):
        registries.resolve("evil.com/path?x")


def test_credentials_from_a_docker_config(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "auths": {
                    "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hubuser:hubpass").decode()},
                    "ghcr.io": {"username": "gh", "password": "tok"},
                }
            }
        )
    )
    creds = Credentials.load(config)
    assert creds.for_host("docker.io", docker_hub=True).username == "hubuser"
    assert (
        creds.for_host("ghcr.io", docker_hub=False).basic() == "Basic " + base64.b64encode(b"gh:tok").decode()
    )
    assert creds.for_host("quay.io", docker_hub=False) is None
    assert "tok" not in repr(creds.for_host("ghcr.io", docker_hub=False))
    with pytest.raises(ValueError, match="cannot read registry credentials"):
        Credentials.load(tmp_path / "missing.json")


def test_challenges_parse():
    scheme, params = parse_challenge(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"'
    )
    assert scheme == "bearer"
    assert params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/alpine:pull",
    }
    assert parse_challenge('Basic realm="x"')[0] == "basic"


def test_hosts_toml_written_backed_up_and_removed(tmp_path):
    certs = tmp_path / "certs.d"
    existing = certs / "ghcr.io" / "hosts.toml"
    existing.parent.mkdir(parents=True)
    existing.write_text('server = "https://ghcr.io"\n# the operator\'s own\n')
    entries = [
        hosts.RegistryEntry.parse(r) for r in ("docker.io", "ghcr.io", "http://my.registry:5000", "_default")
    ]
    for entry in entries:
        hosts.write(certs, entry, "http://127.0.0.1:65001")
    hub = (certs / "docker.io" / "hosts.toml").read_text()
    assert 'server = "https://registry-1.docker.io"' in hub
    assert '[host."http://127.0.0.1:65001"]' in hub and 'capabilities = ["pull", "resolve"]' in hub
    assert 'server = "http://my.registry:5000"' in (certs / "my.registry:5000" / "hosts.toml").read_text()
    assert "server" not in (certs / "_default" / "hosts.toml").read_text()
    assert "the operator's own" in (certs / "ghcr.io" / hosts.BACKUP).read_text()
    hosts.write(certs, entries[1], "http://127.0.0.1:65001")  # writing again keeps the first backup
    assert "the operator's own" in (certs / "ghcr.io" / hosts.BACKUP).read_text()
    for entry in entries:
        hosts.remove(certs, entry)
    assert existing.read_text().endswith("# the operator's own\n")
    assert not (certs / "docker.io").exists() and not (certs / "_default").exists()
    with pytest.raises(ValueError):
        hosts.RegistryEntry.parse("ftp://x")


def test_containerd_hint_only_when_config_path_is_missing(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("version = 2\n")
    assert 'config_path = "/etc/containerd/certs.d"' in hosts.containerd_hint(tmp_path / "x", config).replace(
        str(tmp_path / "x"), "/etc/containerd/certs.d"
    )
    config.write_text(
        '[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/etc/containerd/certs.d"\n'
    )
    assert hosts.containerd_hint(tmp_path, config) is None
