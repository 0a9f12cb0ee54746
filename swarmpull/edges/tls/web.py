"""Identities over aiohttp: who sent a request, who answered one, and a middleware that
lets through only requests from an authenticated identity.

The identity of a connection is read once, from the certificate OpenSSL verified during
its handshake, and kept for the connection's life (renegotiation is off, so it cannot
change): requests on a kept-alive connection pay a dictionary lookup.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import weakref
from collections.abc import Collection

import aiohttp
from aiohttp import web
from aiohttp.connector import Connection
from aiohttp.typedefs import Handler, Middleware

from swarmpull.core.identity import Identity, IdentityError, Role, identity_from_peercert
from swarmpull.core.protocol import error_body

UNAUTHENTICATED = "UNAUTHENTICATED"
FORBIDDEN = "FORBIDDEN"

_identities: weakref.WeakKeyDictionary[ssl.SSLObject, Identity | IdentityError] = weakref.WeakKeyDictionary()


class NoCertificate(IdentityError):
    """The connection is not TLS, or the other side presented no certificate."""


def transport_identity(transport: asyncio.BaseTransport | None) -> Identity:
    """The identity the other end of ``transport`` proved with its certificate.
    NoCertificate without TLS or without a certificate; IdentityError if the
    certificate (verified against the cluster CA) does not name a valid identity."""
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        raise NoCertificate("not a TLS connection")
    known = _identities.get(ssl_object)
    if known is None:
        cert = ssl_object.getpeercert()
        if not cert:
            raise NoCertificate("no client certificate")
        try:
            known = identity_from_peercert(cert)
        except IdentityError as exc:
            known = exc
        _identities[ssl_object] = known
    if isinstance(known, IdentityError):
        raise known
    return known


def _refusal(status: type[web.HTTPException], code: str, message: str) -> web.HTTPException:
    return status(text=json.dumps(error_body(code, message)), content_type="application/json")


def request_identity(request: web.BaseRequest) -> Identity:
    """Who sent ``request``; a 401 (no certificate) or 403 (a certificate that names no
    valid identity) with a JSON error body otherwise. Handlers behind ``identity_middleware``
    call it to learn who is asking."""
    try:
        return transport_identity(request.transport)
    except NoCertificate as exc:
        message = f"a client certificate is required: {exc}"
        raise _refusal(web.HTTPUnauthorized, UNAUTHENTICATED, message) from None
    except IdentityError as exc:
        raise _refusal(web.HTTPForbidden, FORBIDDEN, str(exc)) from None


def require_role(request: web.BaseRequest, *roles: Role) -> Identity:
    """Who sent ``request``, if its certificate has one of ``roles``; else 401/403."""
    identity = request_identity(request)
    if identity.role not in roles:
        wanted = " or ".join(r.value for r in roles)
        raise _refusal(web.HTTPForbidden, FORBIDDEN, f"{identity} may not do this: only a {wanted} may")
    return identity


def require_name(request: web.BaseRequest, name: str) -> Identity:
    """Who sent ``request``, if it is the node called ``name`` (the peer id a request acts
    for: registering, reporting, leaving); else 401/403. No one acts in another's name."""
    identity = request_identity(request)
    if identity.name != name:
        raise _refusal(web.HTTPForbidden, FORBIDDEN, f"{identity} may not act for {name!r}")
    return identity


def identity_middleware(
    roles: Collection[Role] = (Role.NODE, Role.SUPERNODE), open_paths: Collection[str] = ()
) -> Middleware:
    """Refuse every request without an identity in ``roles`` (401 or 403, JSON), except
    those for ``open_paths`` (exact paths such as ``/healthz``: reachable only when the
    server context does not require client certificates)."""
    allowed = tuple(roles)
    anyone = frozenset(open_paths)

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in anyone:
            require_role(request, *allowed)
        return await handler(request)

    return authenticate


class IdentifiedResponse(aiohttp.ClientResponse):
    """A client response that remembers who answered it (``response_identity``), taken
    from the connection before aiohttp may hand it back to its pool. Sessions for cluster
    traffic use it: ``aiohttp.ClientSession(response_class=IdentifiedResponse)``."""

    server_identity: Identity | IdentityError | None = None

    async def start(self, connection: Connection) -> IdentifiedResponse:
        try:
            self.server_identity = transport_identity(connection.transport)
        except IdentityError as exc:
            self.server_identity = exc
        await super().start(connection)
        return self


def response_identity(response: aiohttp.ClientResponse) -> Identity:
    """Who answered ``response``: the identity in the server's certificate (which the
    handshake already checked against the ``server_hostname`` the request expected).
    Any response of a session with ``response_class=IdentifiedResponse``; of another
    session only while its connection is held (before the body is read: a small body
    can arrive with the headers and free the connection at once). IdentityError (or
    NoCertificate) when it cannot tell."""
    known = getattr(response, "server_identity", None)
    if known is None:
        connection = response.connection
        if connection is None:
            raise IdentityError(
                "the connection went back to the pool: use a session with "
                "response_class=IdentifiedResponse, or read the identity before the body"
            )
        return transport_identity(connection.transport)
    if isinstance(known, IdentityError):
        raise known
    return known
