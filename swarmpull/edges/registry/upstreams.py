"""Which upstream registry a request is for, and its URLs.

containerd names the registry in ``?ns=<host>``; docker's ``registry-mirrors`` sends no
``ns`` and means Docker Hub (the configured default). Docker Hub's API host is
``registry-1.docker.io`` and its single-name images live under ``library/``. Upstreams
speak HTTPS unless listed as insecure.
"""

from __future__ import annotations

from dataclasses import dataclass

from swarmpull.core.oci import check_host

DOCKER_HUB_NAMES = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)
DOCKER_HUB_API = "registry-1.docker.io"


@dataclass(frozen=True, slots=True)
class Upstream:
    """One registry, as the client named it (``host``) and as we reach it (``base``)."""

    host: str
    base: str  # scheme://host[:port]

    @property
    def is_docker_hub(self) -> bool:
        return self.host in DOCKER_HUB_NAMES

    def repository(self, name: str) -> str:
        """The repository path upstream: Docker Hub keeps single names in library/."""
        if self.is_docker_hub and "/" not in name:
            return f"library/{name}"
        return name

    def url(self, name: str, kind: str, reference: str) -> str:
        return f"{self.base}/v2/{self.repository(name)}/{kind}/{reference}"


class Registries:
    """Registry hosts to upstreams: the default for none, plain HTTP for the insecure."""

    def __init__(self, default: str, insecure: frozenset[str]) -> None:
        self._default = check_host(default)
        self._insecure = frozenset(h.lower() for h in insecure)

    def resolve(self, ns: str | None) -> Upstream:
        """The upstream ``ns`` names (the default without one); ValueError for a bad host."""
        host = check_host(ns) if ns else self._default
        api = DOCKER_HUB_API if host in DOCKER_HUB_NAMES else host
        scheme = "http" if host in self._insecure or api in self._insecure else "https"
        return Upstream(host, f"{scheme}://{api}")
