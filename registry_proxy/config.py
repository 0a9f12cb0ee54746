"""The registry proxy's configuration."""

from __future__ import annotations

from dataclasses import dataclass, field

from swarmpull.edges.http import HostPort
from swarmpull.edges.registry import RegistryOptions

DEFAULT_LISTEN = HostPort("127.0.0.1", 65001)


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    listen: HostPort = DEFAULT_LISTEN
    """Where containerd (hosts.toml) or docker (registry-mirrors) reach the proxy."""
    registry: RegistryOptions = field(default_factory=RegistryOptions)
    """How upstream registries are reached, and this node's own logins for them."""
    stall_timeout: float = 60.0
    """Seconds without a byte on a blob before the client's transfer is cut."""
