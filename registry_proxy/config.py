"""The registry proxy's configuration."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from swarmpull.edges.http import HostPort

DEFAULT_LISTEN = HostPort("127.0.0.1", 65001)


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    listen: HostPort = DEFAULT_LISTEN
    """Where containerd (hosts.toml) or docker (registry-mirrors) reach the proxy."""
    default_registry: str = "docker.io"
    """The upstream for requests without ``?ns=`` (docker's registry-mirrors send none)."""
    insecure_registries: frozenset[str] = field(default_factory=frozenset)
    """Registries (``host`` or ``host:port``) spoken to in plain HTTP. Opt-in only."""
    registry_ca: Path | None = None
    """Extra CA certificates (PEM) trusted for upstream registries, beside the system's."""
    credentials: Path | None = None
    """A docker ``config.json`` with registry credentials; None: none."""
    request_timeout: float = 60.0
    """Seconds for an upstream manifest or metadata request."""
    stall_timeout: float = 60.0
    """Seconds without a byte on a blob before the client's transfer is cut."""
