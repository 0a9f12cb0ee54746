"""Who may act, per route: the check a handler makes once it knows whose name a request
acts in (a peer id in its path or body).

With mutual TLS the answer is the certificate's (``require_name``, ``require_role``);
on a cluster run with ``--insecure-cluster`` there is nobody to ask, and every check
passes: the same handlers serve both, with a ``CallerGate`` built for each.
"""

from __future__ import annotations

from aiohttp import web

from swarmpull.core.identity import Identity, Role
from swarmpull.edges.tls.web import require_name, require_role


class CallerGate:
    """Checks on the caller of a request: ``mutual=False`` passes every one."""

    def __init__(self, mutual: bool) -> None:
        self.mutual = mutual

    def __repr__(self) -> str:
        return f"<CallerGate {'mutual TLS' if self.mutual else 'open'}>"

    def acting_for(self, request: web.BaseRequest, peer_id: str) -> Identity | None:
        """A request made in node ``peer_id``'s name (register, report, leave, open, the
        channel, offers, preheat polls): only that node's own certificate may make it,
        a node's (a supernode's name is no peer id); 401/403 with a JSON body otherwise."""
        if not self.mutual:
            return None
        require_role(request, Role.NODE)
        return require_name(request, peer_id)

    def of_role(self, request: web.BaseRequest, *roles: Role) -> Identity | None:
        """A request only ``roles`` may make; 401/403 with a JSON body otherwise."""
        if not self.mutual:
            return None
        return require_role(request, *roles)


OPEN = CallerGate(mutual=False)
