"""Who may fetch a task's pieces from this server: the holder of a capability for it.

Every ``/pieces/<task>/...`` request carries the capability the supernode gave the
requester (``swarmpull.core.capability``). The seed and every piece server check it before
anything else, so a node that could not prove pull rights learns not even whether the
task is held here. With mutual TLS the capability must name the certificate's holder; a
supernode's certificate needs none (a supernode may check any piece it signed). On a
cluster run with ``--insecure-cluster`` the capability binds only the peer id it names:
anyone who reads one off the network may replay it, so an insecure cluster has no
authorization worth the name.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from aiohttp import web

from swarmpull.core.capability import CAPABILITY_HEADER, CapabilityError, verify
from swarmpull.core.identity import IdentityError, Role
from swarmpull.core.signing import TaskKeys
from swarmpull.edges.http import json_error
from swarmpull.edges.tls.web import transport_identity

FORBIDDEN = "CAPABILITY_REQUIRED"
CHECK_HEADER = "X-Swarmpull-Check"  # a supernode's check of a piece (``supernode.verify``)


class KeyBook(Protocol):
    """The keys this server trusts for a task's capabilities: the task's statement keys,
    as its supernode named them; None for a task it knows no keys of."""

    def keys_for(self, task_id: str) -> TaskKeys | None: ...


class PieceGate:
    """Checks the capability on a ``/pieces`` request; ``mutual``: the caller's name is
    its certificate's. ``wall`` is unix time (capabilities expire on the supernode's clock,
    not on a monotonic one)."""

    def __init__(self, keys: KeyBook, mutual: bool, wall: Callable[[], float] = time.time) -> None:
        self._keys = keys
        self._mutual = mutual
        self._wall = wall

    def __repr__(self) -> str:
        return f"<PieceGate {'mutual TLS' if self._mutual else 'claimed ids'}>"

    def admit(self, request: web.BaseRequest, task_id: str) -> str | web.Response:
        """The requester's name if it may have ``task_id``'s pieces (its certificate's, or
        on an insecure cluster the peer id its capability names); else the 403 to answer."""
        caller = None
        if self._mutual:
            try:
                identity = transport_identity(request.transport)
            except IdentityError as exc:
                return json_error(403, FORBIDDEN, f"no cluster identity: {exc}")
            if identity.role is Role.SUPERNODE:
                return identity.name
            caller = identity.name
        text = request.headers.get(CAPABILITY_HEADER, "")
        if not text:
            return json_error(403, FORBIDDEN, f"a capability for {task_id} is required ({CAPABILITY_HEADER})")
        keys = self._keys.keys_for(task_id)
        if keys is None:
            return json_error(403, FORBIDDEN, f"no capability for {task_id} can be checked here")
        try:
            capability = verify(text, keys, task_id, caller, self._wall())
        except CapabilityError as exc:
            return json_error(403, FORBIDDEN, f"capability refused: {exc}")
        return capability.peer_id

    def checking(self, request: web.BaseRequest) -> bool:
        """Whether an admitted request is a supernode's check of a piece: a supernode's
        certificate, which says so. Never on an insecure cluster, where anyone may say
        anything (and take the places kept for checks, or pass the seed's ration)."""
        if CHECK_HEADER not in request.headers or not self._mutual:
            return False
        try:
            return transport_identity(request.transport).role is Role.SUPERNODE
        except IdentityError:
            return False
