"""Connections to upstreams only where ``--upstream-allow`` lets them go.

``GuardedConnector`` is the supernode's ``aiohttp`` connector for every upstream read
(blobs, manifests, token realms, preheat). It asks ``UpstreamAllow`` about each address a
host name resolved to, after resolving and before connecting, and connects only to the
addresses allowed: the check sees the very address the socket is opened to, so a name
that resolves to a public address once and to loopback later (DNS rebinding) cannot
pass, nor can a redirect (every hop is a new connection through here). An address given
as such in the URL is checked the same way. Nothing allowed: ``UpstreamRefused``, a
``ClientConnectionError`` whose message names the host and the flag.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import aiohttp
from aiohttp.abc import ResolveResult

from swarmpull.core.upstreams import UpstreamAllow

log = logging.getLogger(__name__)


class UpstreamRefused(aiohttp.ClientConnectionError):
    """The supernode may not connect to this upstream (``--upstream-allow``)."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(reason)
        self.host = host
        self.port = port
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class GuardedConnector(aiohttp.TCPConnector):
    """A ``TCPConnector`` that connects only to addresses ``allow`` allows."""

    def __init__(self, allow: UpstreamAllow, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.allow = allow

    async def _resolve_host(
        self, host: str, port: int, traces: Sequence[Any] | None = None
    ) -> list[ResolveResult]:
        # aiohttp's own step between resolving (its DNS cache included) and connecting;
        # it returns an address given in the URL as it is, so both kinds come here.
        hosts = await super()._resolve_host(host, port, traces=traces)
        allowed, refusals = [], []
        for entry in hosts:
            reason = self.allow.decide(host, entry["port"], entry["host"])
            if reason is None:
                allowed.append(entry)
            else:
                refusals.append(reason)
        if not allowed:
            reason = refusals[0] if refusals else f"upstream {host} resolved to no address"
            log.warning("refused to connect: %s", reason)
            raise UpstreamRefused(host, port, reason)
        return allowed


def guarded_connector(allow: UpstreamAllow, **kwargs: Any) -> GuardedConnector:
    return GuardedConnector(allow, **kwargs)
