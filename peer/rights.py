"""Whether a local API request may have a blob this node holds, or is already fetching.

A download opens its task with the request's own URL and headers, and the supernode lets
a private blob's opener in only with pull rights of its own (``PULL_DENIED`` otherwise).
A request that would not open the task (the blob is in the store, or another request's
download is under way) asks the same question first: an open with its URL and headers.
Without that, a client with no credentials would get whatever another one fetched.
An answer that lets it in is kept per (task, URL, credentials) for ``ttl`` seconds.

When no supernode answers, the held blob is served as before: the supernode is the
authority on pull rights, and a node cut off from it keeps working (see SECURITY.md).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable

from peer.control import Control
from peer.link import LinkError, SupernodeUnavailable
from swarmpull.core.bitfield import to_text
from swarmpull.core.blobs import BlobRequest, DownloadFailed
from swarmpull.core.clock import Clock
from swarmpull.core.protocol import OpenTask
from swarmpull.edges.store import PieceStore

TTL = 60.0
MAX_ENTRIES = 10_000


def _key(request: BlobRequest) -> str:
    lines = sorted(f"{k.lower()}:{v}" for k, v in request.headers.items())
    return hashlib.sha256("\n".join([request.task_id, request.url, *lines]).encode()).hexdigest()


class LocalRights:
    """Checks a local API request's own pull rights with the supernode (see the module)."""

    def __init__(
        self,
        control: Control,
        store: PieceStore,
        peer_id: str,
        clock: Clock,
        running: Callable[[str], bool],
        timeout: float,
        ttl: float = TTL,
    ) -> None:
        self._control = control
        self._store = store
        self._peer_id = peer_id
        self._clock = clock
        self._running = running  # a download of the task is under way
        self._timeout = timeout
        self._ttl = ttl
        self._passed: OrderedDict[str, float] = OrderedDict()

    def __repr__(self) -> str:
        return f"<LocalRights {len(self._passed)} passed>"

    async def check(self, request: BlobRequest) -> None:
        """DownloadFailed (``denied``) if the supernode says this request's own URL and
        credentials do not pull the blob."""
        blob = self._store.get(request.task_id)
        if (blob is None or blob.verified_count == 0) and not self._running(request.task_id):
            return  # its own download opens the task with its own credentials
        key = _key(request)
        at = self._passed.get(key)
        if at is not None and self._clock.monotonic() - at < self._ttl:
            return
        have = to_text(blob.have, blob.geometry.count) if blob is not None and blob.have else ""
        req = OpenTask(self._peer_id, request.url, request.digest, request.headers, have)
        try:
            await self._control.open(req, self._timeout)
        except LinkError as exc:
            if exc.code == "PULL_DENIED":
                raise DownloadFailed(str(exc), exc.upstream_status, denied=True) from None
            return  # anything else: the download, or the store, answers as it would have
        except SupernodeUnavailable:
            return
        self._passed[key] = self._clock.monotonic()
        self._passed.move_to_end(key)
        while len(self._passed) > MAX_ENTRIES:
            self._passed.popitem(last=False)
