"""What the daemons' configurations make of a TLS directory: the peer id, the schemes of
addresses, the role a daemon needs; and the gate that lets a request act for a peer."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from peer.config import PeerConfig
from supernode.config import SupernodeConfig
from swarmpull.core.identity import Role
from swarmpull.edges.http import HostPort, advertised_url
from swarmpull.edges.tls import OPEN, CallerGate, ClusterTls, throwaway_cluster

NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> dict[str, ClusterTls]:
    root = tmp_path_factory.mktemp("cluster")
    dirs = throwaway_cluster(root, [("sn1", Role.SUPERNODE), ("node-7", Role.NODE)], now=NOW)
    return {name: ClusterTls.load(path, now=NOW, require_client_cert=False) for name, path in dirs.items()}


def test_a_node_is_named_by_its_certificate(cluster, tmp_path: Path):
    config = PeerConfig(data_dir=tmp_path, supernodes=("https://sn:65003",), tls=cluster["node-7"])
    assert config.node_id == "node-7"
    assert PeerConfig(data_dir=tmp_path, peer_id="node-7", tls=cluster["node-7"]).node_id == "node-7"
    assert PeerConfig(data_dir=tmp_path, peer_id="other").node_id == "other"  # no TLS: as before


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"peer_id": "node-8"}, "is not the name of the certificate"),
        ({"supernodes": ("http://sn:65003",)}, "supernodes are https:// URLs"),
        ({"advertise": "http://10.0.0.7:65002"}, "the advertised URL is https://"),
    ],
)
def test_a_node_config_that_tls_cannot_serve_is_refused(cluster, tmp_path: Path, fields, message):
    with pytest.raises(ValueError, match=message):
        PeerConfig(data_dir=tmp_path, tls=cluster["node-7"], **fields)


def test_roles_are_not_interchangeable(cluster, tmp_path: Path):
    with pytest.raises(ValueError, match="a node needs a node certificate"):
        PeerConfig(data_dir=tmp_path, tls=cluster["sn1"])
    with pytest.raises(ValueError, match="a supernode needs a supernode certificate"):
        SupernodeConfig(tls=cluster["node-7"])
    assert SupernodeConfig(tls=cluster["sn1"]).tls is cluster["sn1"]


def test_addresses_under_tls_are_https():
    bound = HostPort("127.0.0.1", 7)
    assert advertised_url(bound, None, "https") == "https://127.0.0.1:7"
    assert advertised_url(bound, "10.0.0.7:9", "https") == "https://10.0.0.7:9"
    assert advertised_url(bound, "http://10.0.0.7:9") == "http://10.0.0.7:9"  # plain: as before
    with pytest.raises(ValueError, match="must be https://"):
        advertised_url(bound, "http://10.0.0.7:9", "https")


def test_an_open_gate_lets_every_request_act_and_a_mutual_one_none_without_a_certificate():
    request = make_mocked_request("POST", "/api/v1/peers/node-7/report")  # no TLS transport
    assert OPEN.acting_for(request, "node-7") is None
    assert OPEN.of_role(request, Role.SUPERNODE) is None
    mutual = CallerGate(mutual=True)
    with pytest.raises(web.HTTPUnauthorized):
        mutual.acting_for(request, "node-7")
    with pytest.raises(web.HTTPUnauthorized):
        mutual.of_role(request, Role.SUPERNODE)
