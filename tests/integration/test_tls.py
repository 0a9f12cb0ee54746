"""Mutual TLS over loopback: a real aiohttp server and client, certificates from a cluster
CA, and the ones that must be refused (no certificate, another CA, the wrong name or
role, expired)."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from aiohttp import web

from swarmpull.core.identity import Identity, Role
from swarmpull.edges.http import HostPort, start_site
from swarmpull.edges.tls import (
    CertificateAuthority,
    ClusterTls,
    IdentifiedResponse,
    TlsFiles,
    client_context,
    identity_middleware,
    load_tls_dir,
    request_identity,
    require_name,
    response_identity,
    write_tls_dir,
)
from swarmpull.edges.tls.files import identity_of_certificate

NOW = datetime.now(UTC)
LOOPBACK = HostPort("127.0.0.1", 0)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A CA, a foreign CA, and TLS directories: supernode sn1, nodes peer-1 and peer-2,
    peer-x from the foreign CA."""
    root = tmp_path_factory.mktemp("tls")
    ca, foreign = CertificateAuthority.generate(now=NOW), CertificateAuthority.generate(now=NOW)
    dirs = {}
    for name, role, issuer in [
        ("sn1", Role.SUPERNODE, ca),
        ("peer-1", Role.NODE, ca),
        ("peer-2", Role.NODE, ca),
        ("peer-x", Role.NODE, foreign),
    ]:
        dirs[name] = root / name
        write_tls_dir(dirs[name], issuer.issue(name, role, now=NOW), [issuer.certificate])
    # peer-x trusts both CAs, so that only its own certificate is what is refused.
    write_tls_dir(
        root / "peer-x-trusting",
        foreign.issue("peer-x", now=NOW),
        [foreign.certificate, ca.certificate],
    )
    dirs["peer-x-trusting"] = root / "peer-x-trusting"
    return {"ca": ca, "foreign": foreign, "root": root, "dirs": dirs}


def tls(cluster, name: str) -> ClusterTls:
    return ClusterTls.load(cluster["dirs"][name], now=NOW)


async def whoami(request: web.Request) -> web.Response:
    return web.json_response({"name": request_identity(request).name})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def act_for(request: web.Request) -> web.Response:
    identity = require_name(request, request.match_info["peer"])
    return web.json_response({"acted": identity.name})


class Server:
    def __init__(self, server_tls: ClusterTls, **middleware) -> None:
        self.tls = server_tls
        self.middleware = middleware
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> Server:
        app = web.Application(middlewares=[identity_middleware(**self.middleware)])
        app.add_routes(
            [
                web.get("/whoami", whoami),
                web.post("/peers/{peer}", act_for),
                web.get("/healthz", healthz),
            ]
        )
        self.runner, bound = await start_site(app, LOOPBACK, ssl_context=self.tls.server)
        self.url = f"https://{bound.host}:{bound.port}"
        return self

    async def __aexit__(self, *exc) -> None:
        await self.runner.cleanup()


async def get(url: str, **kwargs) -> tuple[int, dict, Identity | None]:
    async with (
        aiohttp.ClientSession(response_class=IdentifiedResponse) as session,
        session.get(url, **kwargs) as resp,
    ):
        return resp.status, await resp.json(), response_identity(resp)


async def test_both_sides_see_who_the_other_is(cluster):
    async with Server(tls(cluster, "sn1")) as server:
        client = tls(cluster, "peer-1")
        status, body, answered_by = await get(f"{server.url}/whoami", **client.to_supernode())
        assert (status, body) == (200, {"name": "peer-1"})
        assert answered_by == Identity("sn1", Role.SUPERNODE)
        # The one replica by name, too.
        status, _, _ = await get(f"{server.url}/whoami", **client.to_supernode("sn1"))
        assert status == 200


async def test_keep_alive_requests_keep_their_identity(cluster):
    async with Server(tls(cluster, "peer-2")) as server:
        client = tls(cluster, "peer-1")
        connections = []

        async def created(session, context, params) -> None:
            connections.append(params)

        trace = aiohttp.TraceConfig()
        trace.on_connection_create_end.append(created)
        async with aiohttp.ClientSession(trace_configs=[trace]) as session:
            for _ in range(3):
                async with session.get(f"{server.url}/whoami", **client.to_node("peer-2")) as resp:
                    assert await resp.json() == {"name": "peer-1"}
        assert len(connections) == 1  # one handshake, three requests


async def test_a_client_without_a_certificate_is_refused_by_tls(cluster):
    async with Server(tls(cluster, "sn1")) as server:
        anonymous = ssl.create_default_context(cafile=str(cluster["dirs"]["sn1"] / "ca.pem"))
        anonymous.check_hostname = False
        with pytest.raises(aiohttp.ClientError):
            await get(f"{server.url}/whoami", ssl=anonymous)


async def test_without_required_certificates_only_open_paths_answer(cluster):
    server_tls = ClusterTls(load_tls_dir(cluster["dirs"]["sn1"], now=NOW), require_client_cert=False)
    async with Server(server_tls, open_paths=["/healthz"]) as server:
        anonymous = ssl.create_default_context(cafile=str(cluster["dirs"]["sn1"] / "ca.pem"))
        anonymous.check_hostname = False
        status, body, _ = await get(f"{server.url}/healthz", ssl=anonymous)
        assert (status, body) == (200, {"ok": True})
        status, body, _ = await get(f"{server.url}/whoami", ssl=anonymous)
        assert status == 401
        assert body["error"]["code"] == "UNAUTHENTICATED"
        # A certificate presented anyway is still verified, and counts.
        status, body, _ = await get(f"{server.url}/whoami", **tls(cluster, "peer-1").to_supernode())
        assert (status, body) == (200, {"name": "peer-1"})


async def test_a_certificate_from_another_ca_is_refused(cluster):
    async with Server(tls(cluster, "sn1")) as server:
        # It trusts our CA (so it accepts the server), but ours does not trust its CA.
        stranger = tls(cluster, "peer-x-trusting")
        with pytest.raises(aiohttp.ClientError):
            await get(f"{server.url}/whoami", **stranger.to_supernode())
        # And a server from another CA is refused by our client.
    async with Server(tls(cluster, "peer-x")) as foreign_server:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await get(f"{foreign_server.url}/whoami", **tls(cluster, "peer-1").to_node("peer-x"))


async def test_the_client_refuses_a_server_that_is_not_the_one_it_expects(cluster):
    async with Server(tls(cluster, "peer-2")) as server:
        client = tls(cluster, "peer-1")
        with pytest.raises(aiohttp.ClientConnectorCertificateError, match="Hostname mismatch"):
            await get(f"{server.url}/whoami", **client.to_node("peer-3"))
        # A node cannot pass for a supernode.
        with pytest.raises(aiohttp.ClientConnectorCertificateError, match="Hostname mismatch"):
            await get(f"{server.url}/whoami", **client.to_supernode())


async def test_the_middleware_refuses_a_role_with_403(cluster):
    async with Server(tls(cluster, "sn1"), roles=[Role.SUPERNODE]) as server:
        status, body, _ = await get(f"{server.url}/whoami", **tls(cluster, "peer-1").to_supernode())
        assert status == 403
        assert body["error"]["code"] == "FORBIDDEN"
        assert "node peer-1" in body["error"]["message"]


async def test_no_one_acts_in_another_nodes_name(cluster):
    async with Server(tls(cluster, "sn1")) as server:
        client = tls(cluster, "peer-1")
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{server.url}/peers/peer-1", **client.to_supernode()) as resp:
                assert (resp.status, await resp.json()) == (200, {"acted": "peer-1"})
            async with session.post(f"{server.url}/peers/peer-2", **client.to_supernode()) as resp:
                assert resp.status == 403
                assert (await resp.json())["error"]["code"] == "FORBIDDEN"


async def test_an_expired_client_certificate_is_refused(cluster, tmp_path):
    ca = cluster["ca"]
    issued = ca.issue("peer-1", now=NOW - timedelta(days=10), days=5)
    write_tls_dir(tmp_path / "expired", issued, [ca.certificate])
    # load_tls_dir refuses it; build the context by hand, as a careless client would.
    files = TlsFiles(
        tmp_path / "expired",
        identity_of_certificate(issued.certificate),
        issued.certificate,
        ca.certificate,
        (ca.certificate,),
    )
    async with Server(tls(cluster, "sn1")) as server:
        with pytest.raises(aiohttp.ClientError):
            await get(
                f"{server.url}/whoami",
                ssl=client_context(files),
                server_hostname="sn1.supernode.swarmpull.invalid",
            )


async def test_rotation_trusts_old_and_new_until_the_old_is_dropped(cluster, tmp_path):
    """The order of docs/SECURITY.md: every node trusts both CAs, then certificates are
    reissued by the new one, then the old CA is dropped."""
    old, new = cluster["ca"], CertificateAuthority.generate(now=NOW)
    before = ClusterTls.load(cluster["dirs"]["peer-1"], now=NOW)  # trusts only the old CA
    both = [old.certificate, new.certificate]
    # 1. peer-1 keeps its old certificate and trusts both CAs.
    write_tls_dir(tmp_path / "peer-1", old.issue("peer-1", now=NOW), both)
    peer_1 = ClusterTls.load(tmp_path / "peer-1", now=NOW)
    # 2. sn1 and peer-9 have certificates of the new CA, and trust both.
    write_tls_dir(tmp_path / "sn1", new.issue("sn1", Role.SUPERNODE, now=NOW), both)
    write_tls_dir(tmp_path / "peer-9", new.issue("peer-9", now=NOW), both)
    async with Server(ClusterTls.load(tmp_path / "sn1", now=NOW)) as server:
        for client in (peer_1, ClusterTls.load(tmp_path / "peer-9", now=NOW)):
            status, _, _ = await get(f"{server.url}/whoami", **client.to_supernode())
            assert status == 200
        # Skipping step 1: a node that does not trust the new CA refuses its servers.
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await get(f"{server.url}/whoami", **before.to_supernode())
    # 3. The old CA is dropped: a certificate it issued is refused.
    write_tls_dir(tmp_path / "sn1", new.issue("sn1", Role.SUPERNODE, now=NOW), [new.certificate], force=True)
    async with Server(ClusterTls.load(tmp_path / "sn1", now=NOW)) as server:
        with pytest.raises(aiohttp.ClientError):
            await get(f"{server.url}/whoami", **peer_1.to_supernode())


async def test_the_tls_benchmark_runs():
    """``swarmpull benchmarks tls`` in miniature: it runs and reports every figure."""
    from loadtest.bench.tls import run_tls

    report = await run_tls(runs=1, pieces=2, json_seconds=0.2, connections=5)
    assert "TLSv1.3" in report
    assert report.count("TLS/plain") == 2
    assert "mTLS Ed25519" in report
