"""``ssl.SSLContext``s for mutual TLS inside the cluster, and the arguments of a request.

Both sides present their certificate and verify the other's against ``ca.pem`` (only the
cluster CAs: never the system's). TLS 1.3 is what our components negotiate; 1.2 is
accepted with forward-secret AEAD suites only. The server checks no host name (clients
connect from anywhere); the client checks the server's name against the identity it
expects there (``ClusterTls.to_node``, ``to_supernode``), during the handshake.
"""

from __future__ import annotations

import ssl
from datetime import datetime
from pathlib import Path
from typing import Any

from swarmpull.core.identity import SUPERNODE_TLS_NAME, Identity, Role, tls_name
from swarmpull.edges.tls.files import TlsFiles, load_tls_dir

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"  # TLS 1.3 suites are all AEAD already


def _harden(context: ssl.SSLContext, files: TlsFiles) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    # The identity read from a connection is its handshake's: no renegotiation swaps it.
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.load_verify_locations(cafile=str(files.ca_file))
    context.load_cert_chain(str(files.cert_file), str(files.key_file))
    return context


def server_context(files: TlsFiles, *, require_client_cert: bool = True) -> ssl.SSLContext:
    """For a daemon's listening socket. ``require_client_cert=False`` lets clients without
    a certificate finish the handshake (a certificate they do present is still verified),
    for servers that answer some paths to anyone, such as ``/healthz`` or ``/metrics``; the
    middleware (``swarmpull.edges.tls.web``) then answers 401 on every other path."""
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), files)
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    # asyncio's clients cannot resume sessions: tickets would cost CPU and bytes for nothing.
    context.num_tickets = 0
    context.options |= ssl.OP_NO_TICKET
    return context


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """For every connection to another component. Verifies the server's certificate
    against the cluster CAs and its name against the ``server_hostname`` of the request."""
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), files)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


class ClusterTls:
    """What a daemon needs for mutual TLS: who it is, a server context for its sockets,
    and the arguments that send a request to an expected identity."""

    def __init__(self, files: TlsFiles, *, require_client_cert: bool = True) -> None:
        self.files = files
        self.identity: Identity = files.identity
        self.server = server_context(files, require_client_cert=require_client_cert)
        self.client = client_context(files)

    @classmethod
    def load(
        cls, directory: Path, *, now: datetime, role: Role | None = None, require_client_cert: bool = True
    ) -> ClusterTls:
        return cls(load_tls_dir(directory, now=now, role=role), require_client_cert=require_client_cert)

    def __repr__(self) -> str:
        return f"<ClusterTls {self.identity} {self.files.directory}>"

    def to_node(self, name: str) -> dict[str, Any]:
        """Keyword arguments of an aiohttp request to node ``name`` (a peer id), wherever
        it listens: ``session.get(url, **tls.to_node(peer_id))``."""
        return {"ssl": self.client, "server_hostname": tls_name(name, Role.NODE)}

    def to_supernode(self, name: str | None = None) -> dict[str, Any]:
        """Keyword arguments of an aiohttp request to a supernode: any supernode of the
        cluster (its API, its seed), or the one called ``name`` (a replica)."""
        hostname = SUPERNODE_TLS_NAME if name is None else tls_name(name, Role.SUPERNODE)
        return {"ssl": self.client, "server_hostname": hostname}
