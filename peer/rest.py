"""Calls of the supernode API that do not ride the control channel: torrent offers and
preheat polls. They are few (one per blob, one poll per half minute when idle), so
plain HTTP requests, each supernode tried in turn, are enough."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from peer.link import Failover, LinkError
from swarmpull.core.protocol import API
from swarmpull.edges.http import PEER_HEADER


class SupernodeRest:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        urls: tuple[str, ...],
        peer_id: str,
        timeout: float,
        tls_args: dict[str, Any] | None = None,
    ):
        self._failover = Failover(urls)
        self._session = session
        self._tls_args = tls_args or {}  # mutual TLS: ClusterTls.to_supernode()
        self.peer_id = peer_id
        self._timeout = timeout

    async def call(self, path: str, body: Any, timeout: float | None = None) -> Any:
        """``POST {API}/peers/{me}/{path}``: the JSON answer; LinkError for an error a
        supernode answered (4xx, 502); SupernodeUnavailable when none answered."""

        async def attempt(url: str) -> Any:
            async with self._session.post(
                f"{url}{API}/peers/{self.peer_id}/{path}",
                json=body,
                headers={PEER_HEADER: self.peer_id},
                timeout=aiohttp.ClientTimeout(total=timeout or self._timeout),
                allow_redirects=False,
                **self._tls_args,
            ) as resp:
                data = await resp.read()
                try:
                    payload = json.loads(data) if data else {}
                except ValueError:
                    payload = {}
                if resp.status >= 300:  # a redirect too: not followed, not an answer
                    raise LinkError.of(resp.status, payload)
                return payload

        return await self._failover.call(attempt)
