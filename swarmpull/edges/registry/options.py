"""How a daemon reaches upstream registries: the options the proxy, the supernode and
preheat share (``--default-registry``, ``--insecure-registry``, ``--registry-ca``,
``--registry-auth``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from swarmpull.core.oci import check_host


@dataclass(frozen=True, slots=True)
class RegistryOptions:
    default_registry: str = "docker.io"
    """The upstream for requests that name none (docker's registry-mirrors send no ``ns``)."""
    insecure_registries: frozenset[str] = field(default_factory=frozenset)
    """Registries (``host`` or ``host:port``) spoken to in plain HTTP. Opt-in only."""
    ca: Path | None = None
    """Extra CA certificates (PEM) trusted for upstream registries, beside the system's."""
    credentials: Path | None = None
    """A docker ``config.json`` with this daemon's own registry logins; None: none."""
    request_timeout: float = 60.0
    """Seconds for a manifest or metadata request upstream."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "default_registry", check_host(self.default_registry))
        object.__setattr__(
            self, "insecure_registries", frozenset(check_host(h) for h in self.insecure_registries)
        )
        if self.request_timeout <= 0:
            raise ValueError("request_timeout must be positive")
