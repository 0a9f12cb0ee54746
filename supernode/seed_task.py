"""A blob on the supernode (``SeedTask``), its states, and the errors a caller sees."""

from __future__ import annotations

import asyncio
import enum

from supernode.replication import Batch, Lease
from swarmpull.core.digest import Digest
from swarmpull.core.protocol import TaskInfo
from swarmpull.edges.store import StoredBlob


class TaskState(enum.Enum):
    PENDING = "pending"  # waiting for the upstream's first answer
    RUNNING = "running"  # pieces arriving from upstream
    PARTIAL = "partial"  # some pieces held (after a restart), no upstream read under way
    SEEDED = "seeded"  # every piece held, whole digest verified
    FAILED = "failed"


class TaskFailed(Exception):
    """The task cannot be served; the message says why (upstream status, digest...).
    ``direct`` allows this one peer to try the upstream itself."""

    def __init__(self, message: str, status: int | None = None, direct: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.direct = direct


class ShuttingDown(Exception):
    """The supernode is stopping: ask another one."""


class SeedTask:
    """One blob on the supernode: where it comes from and how far it got."""

    def __init__(self, task_id: str, url: str, expected: Digest | None, headers: dict[str, str]):
        self.id = task_id
        self.url = url
        self.expected = expected
        self.headers = headers  # in memory only: never logged, stored or sent to peers
        self.state = TaskState.PENDING
        self.blob: StoredBlob | None = None
        self.digest: Digest | None = expected
        self.error: str | None = None
        self.error_status: int | None = None
        self.retryable = False  # the upstream may answer others (5xx, timeouts)
        self.direct_granted = 0
        self.failed_at = 0.0
        self.fetch: asyncio.Task[None] | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # With replicas: our lease, the writes for Redis since the last flush, the pieces
        # whose bytes wait in Redis for a first peer holder, and the sha256 of pieces read
        # by an earlier owner that our seed does not hold.
        self.lease: Lease | None = None
        self.batch = Batch()
        self.staged: set[int] = set()
        self.shas: dict[int, str] = {}

    def __repr__(self) -> str:
        return f"<SeedTask {self.id[:20]} {self.state.name}>"

    def info(self) -> TaskInfo:
        assert self.blob is not None
        return TaskInfo(self.id, self.blob.meta.size, self.blob.meta.piece_size, self.digest)

    def sha(self, piece: int) -> str | None:
        assert self.blob is not None
        return self.blob.piece_sha.get(piece) or self.shas.get(piece)
