"""Mutual TLS inside the cluster: the CA (``authority``), a node's TLS directory
(``files``), SSL contexts and request arguments (``contexts``) and identities over aiohttp
(``web``). Who a certificate names, and how, is in ``swarmpull.core.identity``."""

from swarmpull.edges.tls.authority import (
    CA_KEY_FILE,
    CertificateAuthority,
    IssuedCertificate,
    throwaway_cluster,
    write_tls_dir,
)
from swarmpull.edges.tls.contexts import ClusterTls, client_context, server_context
from swarmpull.edges.tls.files import CA_FILE, CERT_FILE, KEY_FILE, TlsError, TlsFiles, load_tls_dir
from swarmpull.edges.tls.gate import OPEN, CallerGate
from swarmpull.edges.tls.web import (
    IdentifiedResponse,
    NoCertificate,
    identity_middleware,
    request_identity,
    require_name,
    require_role,
    response_identity,
    transport_identity,
)

__all__ = [
    "CA_FILE",
    "CA_KEY_FILE",
    "CERT_FILE",
    "KEY_FILE",
    "OPEN",
    "CallerGate",
    "CertificateAuthority",
    "ClusterTls",
    "IdentifiedResponse",
    "IssuedCertificate",
    "NoCertificate",
    "TlsError",
    "TlsFiles",
    "client_context",
    "identity_middleware",
    "load_tls_dir",
    "request_identity",
    "require_name",
    "require_role",
    "response_identity",
    "server_context",
    "throwaway_cluster",
    "transport_identity",
    "write_tls_dir",
]
