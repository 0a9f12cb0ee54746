"""Reaching upstream registries: options, hosts and URLs (``upstreams``), credentials and
token challenges (``auth``), requests (``client``), and the registry as the supernode
and preheat read it (``access``: resolve, fetch verified manifests, HEAD for rights)."""

from swarmpull.edges.registry.access import (
    ANONYMOUS,
    OWN,
    Credential,
    Manifest,
    RegistryAccess,
    Resolved,
)
from swarmpull.edges.registry.errors import RegistryError
from swarmpull.edges.registry.options import RegistryOptions
from swarmpull.edges.registry.upstreams import Registries, Upstream

__all__ = [
    "ANONYMOUS",
    "OWN",
    "Credential",
    "Manifest",
    "Registries",
    "RegistryAccess",
    "RegistryError",
    "RegistryOptions",
    "Resolved",
    "Upstream",
]
