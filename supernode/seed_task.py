"""A blob on the supernode (``SeedTask``), its states, and the errors a caller sees."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field

from supernode.cluster import Batch, Lease
from swarmpull.core.digest import Digest
from swarmpull.core.signing import Signer
from swarmpull.edges.store import StoredBlob


class TaskState(enum.Enum):
    PENDING = "pending"  # waiting for the upstream's first answer
    RUNNING = "running"  # pieces arriving from upstream
    PARTIAL = "partial"  # some pieces held (after a restart), no upstream read under way
    SEEDED = "seeded"  # every piece held, whole digest verified
    FAILED = "failed"


class TaskFailed(Exception):
    """The task cannot be served; the message says why (upstream status, digest...).
    ``direct`` allows this one peer to try the upstream itself; ``refused``: the supernode
    will not read that upstream at all (not allowed, or it lied about this blob before),
    the requester's fault rather than the upstream's (a 4xx)."""

    def __init__(
        self, message: str, status: int | None = None, direct: bool = False, refused: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.direct = direct
        self.refused = refused


class ShuttingDown(Exception):
    """The supernode is stopping: ask another one."""


@dataclass(frozen=True, slots=True)
class Source:
    """Where one requester said the blob is, with the credentials it gave for that URL.
    They travel together: a requester's headers are only ever sent to its own URL."""

    url: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # secrets: never logged


class SeedTask:
    """One blob on the supernode: where it comes from and how far it got."""

    def __init__(self, task_id: str, source: Source, expected: Digest | None):
        self.id = task_id
        self.sources: list[Source] = [source]  # the newest first: its token is the likeliest valid
        self.expected = expected
        self.state = TaskState.PENDING
        self.blob: StoredBlob | None = None
        self.digest: Digest | None = expected
        self.error: str | None = None
        self.error_status: int | None = None
        self.retryable = False  # the upstream may answer others (5xx, timeouts)
        self.refused = False  # the supernode refused to read the upstream (``TaskFailed.refused``)
        # A read after one that failed its digest signs with a key of its own (``Seeding``):
        # None, the supernode's key.
        self.signer: Signer | None = None
        self.direct_granted = 0
        self.failed_at = 0.0
        self.used_at = 0.0  # last open or report: idle tasks expire
        self.fetch: asyncio.Task[None] | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # With replicas: our lease, the writes since the last flush, the pieces whose bytes
        # wait in the cluster for a first peer holder, and the sha256 of pieces read by an
        # earlier owner that our seed does not hold.
        self.lease: Lease | None = None
        self.batch = Batch()
        self.staged: set[int] = set()
        self.shas: dict[int, str] = {}
        self.sha_mask = 0  # the pieces of ``shas``, as a bitfield
        self.keys: list[str] = []  # earlier owners' signing keys (base64)
        self.key_list: list[str] | None = None  # ours and theirs, as answers carry them
        # Whether the read that gave the blob's size carried no credentials (public: every
        # opener gets a capability) or did (private: each opener proves its own rights);
        # None until known, and after a takeover (private, then).
        self.public: bool | None = None
        self.read_source: Source | None = None  # the source of the read's latest attempt
        self.held: StoredBlob | None = None  # the blob, kept from eviction while a read writes it
        self.granted: dict[str, int] = {}  # peer -> when its latest capability expires

    def __repr__(self) -> str:
        return f"<SeedTask {self.id[:20]} {self.state.name}>"

    @property
    def url(self) -> str:
        return self.sources[0].url

    def add_source(self, source: Source) -> None:
        """Another requester's (URL, credentials): tried first from now on, never mixed
        with another requester's."""
        if self.sources[0] == source:
            return  # the same requester's again (every member of a surge, as a rule)
        self.sources = [source, *(s for s in self.sources if s.url != source.url)][:8]

    def vouched(self, have: int) -> int:
        """Of the pieces a peer says it holds, those whose sha256 we hold: only those can
        be checked (by requesters, and by the supernode's own checks)."""
        if self.blob is None:
            return 0
        return have & (self.blob.have | self.sha_mask)

    def sha(self, piece: int) -> str | None:
        if self.blob is not None and self.blob.is_verified(piece):
            return self.blob.sha(piece)
        return self.shas.get(piece)
