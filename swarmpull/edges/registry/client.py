"""Talking to an upstream registry, with authentication handled on the way."""

from __future__ import annotations

import aiohttp

from swarmpull.edges.http import PEER_HEADER
from swarmpull.edges.registry.auth import Authenticator, AuthError
from swarmpull.edges.registry.errors import RegistryError
from swarmpull.edges.registry.upstreams import Upstream
from swarmpull.edges.upstream_guard import UpstreamRefused


class RegistryClient:
    def __init__(
        self, session: aiohttp.ClientSession, auth: Authenticator, timeout: float, stall: float
    ) -> None:
        self._session = session
        self._auth = auth
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._stream_timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=stall)

    async def send(
        self,
        method: str,
        upstream: Upstream,
        name: str,
        kind: str,
        reference: str,
        *,
        headers: dict[str, str] | None = None,
        client_auth: str | None = None,
        stream: bool = False,
    ) -> aiohttp.ClientResponse:
        """The upstream's answer (release it). A client's own ``Authorization`` is passed
        on as it is; otherwise a 401 challenge is answered once and the call retried.
        RegistryError when the registry is unreachable or no credentials fit."""
        url = upstream.url(name, kind, reference)
        scope = self.scope(upstream, name)
        sent = {PEER_HEADER: "registry-proxy", **(headers or {})}
        authorization = client_auth or self._auth.cached(upstream.host, scope)
        if authorization:
            sent["Authorization"] = authorization
        resp = await self._request(method, url, sent, stream)
        challenge = resp.headers.get("WWW-Authenticate")
        if resp.status == 401 and challenge and not client_auth:
            resp.release()
            answer = await self.answer(upstream, name, challenge)
            if answer is None:
                raise RegistryError(
                    401, "UNAUTHORIZED", f"{upstream.host} needs credentials", challenge=challenge
                )
            sent["Authorization"] = answer
            resp = await self._request(method, url, sent, stream)
        return resp

    async def answer(self, upstream: Upstream, name: str, challenge: str) -> str | None:
        """An ``Authorization`` header for the challenge (a token from its realm, with our
        login for the registry if we have one), cached; None if we have nothing to offer."""
        try:
            return await self._auth.answer(
                upstream.host, upstream.is_docker_hub, challenge, self.scope(upstream, name)
            )
        except AuthError as exc:
            raise RegistryError(
                401, "UNAUTHORIZED", str(exc), challenge=challenge, outage=exc.outage
            ) from None

    def has_login(self, upstream: Upstream) -> bool:
        """Whether we hold a login for this registry (``--registry-auth``)."""
        return self._auth.has_login(upstream.host, upstream.is_docker_hub)

    def authorization(self, upstream: Upstream, name: str) -> str | None:
        """The header that last worked for this repository: handed to the swarm, whose
        supernode reads the blob with it."""
        return self._auth.cached(upstream.host, self.scope(upstream, name))

    @staticmethod
    def scope(upstream: Upstream, name: str) -> str:
        return f"repository:{upstream.repository(name)}:pull"

    async def _request(
        self, method: str, url: str, headers: dict[str, str], stream: bool
    ) -> aiohttp.ClientResponse:
        try:
            return await self._session.request(
                method, url, headers=headers, timeout=self._stream_timeout if stream else self._timeout
            )
        except UpstreamRefused as exc:  # not an outage: the same answer every time
            raise RegistryError(403, "DENIED", str(exc)) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RegistryError(
                502,
                "UNKNOWN",
                f"upstream {url.split('/v2/')[0]} unreachable: {exc or type(exc).__name__}",
                outage=True,
            ) from None
