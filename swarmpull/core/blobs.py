"""What a client asks a node for (a blob: its URL, digest, credentials, priority), and
how that can end badly. Shared by the peer, which serves such requests, and the registry
proxy and ``swarmpull get``, which make them."""

from __future__ import annotations

from dataclasses import dataclass, field

from swarmpull.core.digest import Digest
from swarmpull.core.rates import Priority
from swarmpull.core.tasks import check_upstream_url, task_id_for


class DownloadFailed(Exception):
    """The blob cannot be had. ``status`` is the upstream's HTTP status when it said no;
    ``cache_full`` says the local store had no room; ``untrusted``: the pieces held of it
    cannot be trusted (its task failed, or its whole digest did not match) and are dropped;
    ``denied``: the blob is private and the request's own credentials do not pull it;
    ``stopping``: the node is shutting down (nothing more will come of this download, and
    reading the upstream instead would only load it with every pull under way)."""

    def __init__(
        self,
        message: str,
        status: int | None = None,
        cache_full: bool = False,
        untrusted: bool = False,
        denied: bool = False,
        stopping: bool = False,
    ):
        super().__init__(message)
        self.status = status
        self.cache_full = cache_full
        self.untrusted = untrusted
        self.denied = denied
        self.stopping = stopping


class WrongSize(DownloadFailed):
    """The blob is not the size its reader was told (by a manifest's descriptor, say)."""


@dataclass(frozen=True, slots=True)
class BlobRequest:
    """A blob to fetch: its upstream URL, its digest when known, the headers to read it,
    and whether a client waits for it (foreground) or it is prefetch (background)."""

    url: str
    digest: Digest | None = None
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # secrets
    priority: Priority = Priority.FOREGROUND

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", check_upstream_url(self.url))

    @property
    def task_id(self) -> str:
        return task_id_for(self.url, self.digest)
