"""Registry authentication: the bearer-token flow, basic auth, and credentials.

When an upstream answers 401 with ``WWW-Authenticate: Bearer realm=...,service=...,
scope=...``, we ask the realm for a token (anonymously, or with the registry's
credentials from a docker ``config.json``), cache it per registry and scope until it
expires, and retry. ``Basic`` challenges get the credentials directly. Tokens and
passwords live in memory only and never reach a log line.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from swarmpull.core.clock import Clock
from swarmpull.edges.http import PEER_HEADER
from swarmpull.edges.upstream_guard import UpstreamRefused

log = logging.getLogger(__name__)

_PARAM = re.compile(r'(\w+)="([^"]*)"')
_DOCKER_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")


class AuthError(Exception):
    """The realm refused (``outage`` False) or did not answer (``outage`` True)."""

    def __init__(self, message: str, outage: bool = False) -> None:
        super().__init__(message)
        self.outage = outage


@dataclass(frozen=True, slots=True)
class Login:
    username: str
    password: str = field(repr=False)

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


class Credentials:
    """Logins per registry host, read from a docker ``config.json``."""

    def __init__(self, logins: dict[str, Login] | None = None) -> None:
        self._logins = logins or {}

    @classmethod
    def load(cls, path: Path | None) -> Credentials:
        if path is None:
            return cls()
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read registry credentials from {path}: {exc}") from None
        logins = {}
        for key, entry in (data.get("auths") or {}).items():
            if not isinstance(entry, dict):
                continue
            if entry.get("auth"):
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            else:
                user, password = entry.get("username", ""), entry.get("password", "")
            if user:
                logins[_normalize(key)] = Login(user, password)
        return cls(logins)

    def for_host(self, host: str, docker_hub: bool) -> Login | None:
        keys = (*_DOCKER_HUB_KEYS, host) if docker_hub else (host,)
        for key in keys:
            login = self._logins.get(_normalize(key))
            if login is not None:
                return login
        return None


def _normalize(key: str) -> str:
    key = key.lower().removeprefix("https://").removeprefix("http://")
    return key.split("/", 1)[0]


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``("bearer", {"realm": ..., "service": ..., "scope": ...})`` from WWW-Authenticate."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_PARAM.findall(rest))


def _keeps_secrets(realm: str, registry: str) -> bool:
    """Whether a login may go to a token service: over HTTPS, or over plain HTTP only to
    the registry's own host (an insecure registry's own service), never elsewhere in the
    clear."""
    parts = urlsplit(realm)
    return parts.scheme == "https" or (parts.hostname or "") == (urlsplit(f"//{registry}").hostname or "")


class Authenticator:
    """Answers challenges and caches what it got, per ``(registry, scope)``."""

    def __init__(self, session: aiohttp.ClientSession, credentials: Credentials, clock: Clock) -> None:
        self._session = session
        self._credentials = credentials
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[str, float]] = {}  # -> (header, expires)

    def has_login(self, host: str, docker_hub: bool) -> bool:
        return self._credentials.for_host(host, docker_hub) is not None

    def cached(self, host: str, scope: str) -> str | None:
        entry = self._cache.get((host, scope))
        if entry is None:
            return None
        header, expires = entry
        if expires <= self._clock.monotonic():
            del self._cache[(host, scope)]
            return None
        return header

    async def answer(self, host: str, docker_hub: bool, challenge: str, scope: str) -> str | None:
        """An ``Authorization`` value for the challenge, or None if we have nothing to offer."""
        scheme, params = parse_challenge(challenge)
        login = self._credentials.for_host(host, docker_hub)
        now = self._clock.monotonic()
        if scheme == "basic":
            if login is None:
                return None
            header = login.basic()
            self._cache[(host, scope)] = (header, now + 3600)
            return header
        if scheme != "bearer" or "realm" not in params:
            return None
        query = {"service": params.get("service", "")}
        if params.get("scope") or scope:
            query["scope"] = params.get("scope") or scope
        headers = {PEER_HEADER: "registry-proxy"}
        if login is not None and _keeps_secrets(params["realm"], host):
            headers["Authorization"] = login.basic()
        elif login is not None:
            log.warning(
                "token service %s is plain HTTP on another host than the registry %s: "
                "asking it for a token without the login",
                params["realm"], host,
            )  # fmt: skip
        try:
            async with self._session.get(
                params["realm"], params=query, headers=headers, timeout=aiohttp.ClientTimeout(total=30)
            ) as resp:
                if resp.status != 200:
                    outage = resp.status == 429 or resp.status >= 500
                    raise AuthError(f"token service {params['realm']} answered {resp.status}", outage)
                body = await resp.json(content_type=None)
        except UpstreamRefused as exc:  # a realm where the supernode may not connect (--upstream-allow)
            raise AuthError(f"token service {params['realm']}: {exc}", False) from None
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise AuthError(f"token service {params['realm']}: {exc or type(exc).__name__}", True) from None
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise AuthError(f"token service {params['realm']} sent no token")
        lifetime = body.get("expires_in", 60)
        lifetime = lifetime if isinstance(lifetime, int | float) and lifetime > 0 else 60
        header = f"Bearer {token}"
        self._cache[(host, scope)] = (header, now + max(lifetime - 10, lifetime / 2))
        return header
