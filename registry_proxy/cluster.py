"""The cluster as the proxy sees it: the supernode answers registry questions from what
the cluster holds (the node's peer carries them), so that the registry sees O(layers)
requests, not O(nodes), and pulls survive a registry outage.

Each question carries this node's own credential for the registry: containerd's
``Authorization`` if it sent one, else the header our login (``--registry-auth``) got,
else none (anonymous). When the registry wants credentials we have not given yet, the
cluster says so with the registry's challenge; a node with a login answers it (a token
from the realm, or basic auth) and asks again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from registry_proxy.errors import OciError
from swarmpull.core.oci import Descriptor
from swarmpull.core.registry_questions import (
    BlobQuestion,
    ManifestAnswer,
    ManifestQuestion,
    NotAnswered,
    RegistryRefused,
)
from swarmpull.edges.registry import Upstream
from swarmpull.edges.registry.client import RegistryClient

Q = TypeVar("Q", ManifestQuestion, BlobQuestion)
A = TypeVar("A")


class ClusterRegistry(Protocol):
    """What the proxy asks the cluster. Raises RegistryRefused (the registry said no to
    this node's credential) or NotAnswered (the proxy then asks the registry itself)."""

    async def manifest(self, question: ManifestQuestion) -> ManifestAnswer: ...

    async def blob_descriptor(self, question: BlobQuestion) -> Descriptor: ...


async def ask_cluster(
    call: Callable[[Q], Awaitable[A]],
    question: Q,
    client: RegistryClient,
    upstream: Upstream,
    client_auth: str | None,
) -> A | None:
    """The cluster's answer with this node's own credential; None when the cluster has
    none (ask the registry directly). A refusal is the client's OciError."""
    name = question.repository
    credential = client_auth
    if credential is None and client.has_login(upstream):
        credential = client.authorization(upstream, name)  # what our login last got, if anything
    try:
        try:
            return await call(dataclasses.replace(question, authorization=credential))
        except RegistryRefused as exc:
            if exc.status != 401 or not exc.challenge or client_auth or not client.has_login(upstream):
                raise
            answer = await client.answer(upstream, name, exc.challenge)
            if answer is None or answer == credential:
                raise
            return await call(dataclasses.replace(question, authorization=answer))
    except NotAnswered:
        return None
    except RegistryRefused as exc:
        headers = {"WWW-Authenticate": exc.challenge} if exc.challenge else None
        raise OciError(exc.status, exc.code, str(exc), headers) from None
