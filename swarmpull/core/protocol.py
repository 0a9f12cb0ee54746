"""Wire types of the supernode API, parsed from JSON into validated dataclasses.

Every request body goes through ``parse_*`` first; a body of the wrong shape raises
``ProtocolError`` with a message that names the field, which the server answers as 400.
Responses are built from the same types with ``to_json``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from swarmpull.core.digest import Digest, DigestError
from swarmpull.core.failures import FailureReason
from swarmpull.core.tasks import check_upstream_url, validate_task_id

API = "/api/v1"
PEER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")
MAX_PIECES = 1 << 20
MAX_HEADERS = 32
MAX_HEADER_VALUE = 16 * 1024
TASK_STATES = ("running", "seeded", "failed")


class ProtocolError(ValueError):
    """A request body that does not have the documented shape (answered with ``status``,
    400 unless the body was too large)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# ----------------------------------------------------------------- field readers


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return value


def _str(body: dict[str, Any], key: str, *, optional: bool = False, limit: int = 8192) -> Any:
    value = body.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ProtocolError(f"{key!r} must be a non-empty string of at most {limit} characters")
    return value


def _int(body: dict[str, Any], key: str, lo: int, hi: int, default: int | None = None) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ProtocolError(f"{key!r} must be an integer from {lo} to {hi}")
    return value


def _float(body: dict[str, Any], key: str, lo: float, hi: float, default: float) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise ProtocolError(f"{key!r} must be a number from {lo} to {hi}")
    return float(value)


def _pieces(value: Any, key: str) -> list[int]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_PIECES:
        raise ProtocolError(f"{key!r} must be a list of piece indices")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or item < 0:
            raise ProtocolError(f"{key!r} must hold non-negative integers")
    return value


def _peer_id(body: dict[str, Any]) -> str:
    value = _str(body, "peer_id", limit=128)
    if not PEER_ID_RE.match(value):
        raise ProtocolError("'peer_id' may hold letters, digits and . _ : - (at most 128)")
    return value


def _task_id(value: Any, key: str) -> str:
    try:
        return validate_task_id(value if isinstance(value, str) else "")
    except ValueError:
        raise ProtocolError(f"{key!r} must be a task id (sha256-<hex> or url-<hex>)") from None


def _address(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return check_upstream_url(value if isinstance(value, str) else "").rstrip("/")
    except ValueError:
        raise ProtocolError("'address' must be an http(s) URL or null") from None


def parse_peer_id(text: str) -> str:
    if not PEER_ID_RE.match(text):
        raise ProtocolError(f"invalid peer id {text!r}")
    return text


# ---------------------------------------------------------------------- peers


@dataclass(frozen=True, slots=True)
class Holding:
    """Pieces of a blob a peer holds, with the geometry it holds them in."""

    task_id: str
    size: int
    piece_size: int
    pieces: list[int]

    def to_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "size": self.size,
            "piece_size": self.piece_size,
            "pieces": self.pieces,
        }


@dataclass(frozen=True, slots=True)
class PeerRegistration:
    """A peer joining (or rejoining): where it serves pieces, and what it already holds."""

    peer_id: str
    address: str | None  # None: this peer downloads but does not serve
    upload_slots: int = 8
    zone: str | None = None
    rack: str | None = None
    holdings: list[Holding] = field(default_factory=list)
    upload_rate: int | None = None  # its upload limit in bytes per second, if any

    def to_json(self) -> dict[str, Any]:
        labels = {k: v for k, v in (("zone", self.zone), ("rack", self.rack)) if v}
        return {
            "peer_id": self.peer_id,
            "address": self.address,
            "upload_slots": self.upload_slots,
            "upload_rate": self.upload_rate,
            "labels": labels,
            "holdings": [h.to_json() for h in self.holdings],
        }


def parse_holding(raw: Any) -> Holding:
    entry = _obj(raw, "a holding")
    return Holding(
        _task_id(entry.get("task_id"), "task_id"),
        _int(entry, "size", 0, 1 << 50),
        _int(entry, "piece_size", 1, 1 << 31),
        _pieces(entry.get("pieces"), "pieces"),
    )


def parse_peer_registration(raw: Any) -> PeerRegistration:
    body = _obj(raw, "body")
    labels = _obj(body.get("labels") or {}, "'labels'")
    for key, value in labels.items():
        if not isinstance(value, str) or len(value) > 128:
            raise ProtocolError(f"label {key!r} must be a string of at most 128 characters")
    items = body.get("holdings") or []
    if not isinstance(items, list) or len(items) > 100_000:
        raise ProtocolError("'holdings' must be a list")
    holdings = [parse_holding(item) for item in items]
    return PeerRegistration(
        peer_id=_peer_id(body),
        address=_address(body.get("address")),
        upload_slots=_int(body, "upload_slots", 0, 1024, default=8),
        zone=labels.get("zone") or None,
        rack=labels.get("rack") or None,
        holdings=holdings,
        upload_rate=_int(body, "upload_rate", 1, 1 << 50) if body.get("upload_rate") is not None else None,
    )


@dataclass(frozen=True, slots=True)
class Heartbeat:
    dropped_tasks: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"dropped_tasks": self.dropped_tasks}


def parse_heartbeat(raw: Any) -> Heartbeat:
    body = _obj(raw or {}, "body")
    dropped = body.get("dropped_tasks") or []
    if not isinstance(dropped, list):
        raise ProtocolError("'dropped_tasks' must be a list of task ids")
    return Heartbeat([_task_id(t, "dropped_tasks") for t in dropped])


# ---------------------------------------------------------------------- tasks


@dataclass(frozen=True, slots=True)
class OpenTask:
    """Ask for a blob: register it with the supernode (or join it if it exists)."""

    peer_id: str
    url: str
    digest: Digest | None = None
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # secrets: never logged
    have: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"peer_id": self.peer_id, "url": self.url, "have": self.have}
        if self.digest is not None:
            body["digest"] = str(self.digest)
        if self.headers:
            body["headers"] = self.headers
        return body


def parse_open_task(raw: Any) -> OpenTask:
    body = _obj(raw, "body")
    try:
        url = check_upstream_url(_str(body, "url"))
    except ValueError as exc:
        raise ProtocolError(f"'url': {exc}") from None
    digest_text = _str(body, "digest", optional=True, limit=200)
    try:
        digest = Digest.parse(digest_text) if digest_text else None
    except DigestError as exc:
        raise ProtocolError(f"'digest': {exc}") from None
    headers = _obj(body.get("headers") or {}, "'headers'")
    if len(headers) > MAX_HEADERS:
        raise ProtocolError(f"'headers' may hold at most {MAX_HEADERS} entries")
    for name, value in headers.items():
        if not _HEADER_NAME_RE.match(name) or not isinstance(value, str):
            raise ProtocolError("'headers' must map header names to strings")
        if len(value) > MAX_HEADER_VALUE or "\n" in value or "\r" in value:
            raise ProtocolError(f"header {name!r} has an invalid value")
    return OpenTask(_peer_id(body), url, digest, dict(headers), _pieces(body.get("have"), "have"))


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """A task's geometry, fixed by the supernode when it first read the upstream."""

    task_id: str
    size: int
    piece_size: int
    digest: Digest | None = None  # the blob's digest, when known

    def to_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "size": self.size,
            "piece_size": self.piece_size,
            "digest": str(self.digest) if self.digest else None,
        }


def parse_task_info(raw: Any) -> TaskInfo:
    body = _obj(raw, "body")
    digest = body.get("digest")
    try:
        parsed = Digest.parse(digest) if digest else None
    except DigestError as exc:
        raise ProtocolError(f"'digest': {exc}") from None
    return TaskInfo(
        task_id=_task_id(body.get("task_id"), "task_id"),
        size=_int(body, "size", 0, 1 << 50),
        piece_size=_int(body, "piece_size", 1, 1 << 31),
        digest=parsed,
    )


# ----------------------------------------------------------------------- sync


@dataclass(frozen=True, slots=True)
class PieceFailure:
    piece: int
    source: str
    reason: FailureReason

    def to_json(self) -> dict[str, Any]:
        return {"piece": self.piece, "source": self.source, "reason": self.reason.value}


@dataclass(frozen=True, slots=True)
class PieceTiming:
    """The transfer of ``piece`` (``size`` bytes) from ``source`` took ``seconds``."""

    piece: int
    source: str
    size: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"piece": self.piece, "source": self.source, "size": self.size, "seconds": self.seconds}


@dataclass(frozen=True, slots=True)
class SyncRequest:
    """Report finished and failed pieces; ask for up to ``want`` more, waiting ``wait`` s.
    ``uploads`` is how many uploads the peer is serving right now."""

    peer_id: str
    finished: list[int] = field(default_factory=list)
    failed: list[PieceFailure] = field(default_factory=list)
    want: int = 0
    wait: float = 0.0
    timings: list[PieceTiming] = field(default_factory=list)
    uploads: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "peer_id": self.peer_id,
            "finished": self.finished,
            "failed": [f.to_json() for f in self.failed],
            "want": self.want,
            "wait": self.wait,
            "timings": [t.to_json() for t in self.timings],
            "uploads": self.uploads,
        }


def parse_sync_request(raw: Any) -> SyncRequest:
    body = _obj(raw, "body")
    failed_raw = body.get("failed") or []
    if not isinstance(failed_raw, list) or len(failed_raw) > MAX_PIECES:
        raise ProtocolError("'failed' must be a list")
    failed = []
    for item in failed_raw:
        entry = _obj(item, "a 'failed' entry")
        try:
            reason = FailureReason(entry.get("reason"))
        except ValueError:
            choices = ", ".join(r.value for r in FailureReason)
            raise ProtocolError(f"'reason' must be one of {choices}") from None
        failed.append(
            PieceFailure(_int(entry, "piece", 0, MAX_PIECES), _str(entry, "source", limit=128), reason)
        )
    timings_raw = body.get("timings") or []
    if not isinstance(timings_raw, list) or len(timings_raw) > MAX_PIECES:
        raise ProtocolError("'timings' must be a list")
    timings = []
    for item in timings_raw:
        entry = _obj(item, "a 'timings' entry")
        timings.append(
            PieceTiming(
                _int(entry, "piece", 0, MAX_PIECES),
                _str(entry, "source", limit=128),
                _int(entry, "size", 0, 1 << 40),
                _float(entry, "seconds", 0.0, 86400.0, default=-1.0),
            )
        )
    uploads = body.get("uploads")
    return SyncRequest(
        peer_id=_peer_id(body),
        finished=_pieces(body.get("finished"), "finished"),
        failed=failed,
        want=_int(body, "want", 0, 1024, default=0),
        wait=_float(body, "wait", 0.0, 300.0, default=0.0),
        timings=timings,
        uploads=None if uploads is None else _int(body, "uploads", 0, 1 << 20),
    )


@dataclass(frozen=True, slots=True)
class PieceAssignment:
    """Fetch ``piece`` from the source ``source`` at ``address``; it must hash to ``sha256``."""

    piece: int
    source: str
    address: str
    sha256: str
    seed: bool = False  # the source is a supernode's seed, not a peer

    def to_json(self) -> dict[str, Any]:
        return {
            "piece": self.piece,
            "source": self.source,
            "address": self.address,
            "sha256": self.sha256,
            "seed": self.seed,
        }


_HEX64 = re.compile(r"^[a-f0-9]{64}$")


@dataclass(frozen=True, slots=True)
class SyncResponse:
    assignments: list[PieceAssignment]
    state: str = "running"  # one of TASK_STATES
    digest: Digest | None = None  # the blob's digest once known
    error: str | None = None  # why the task failed

    def to_json(self) -> dict[str, Any]:
        return {
            "assignments": [a.to_json() for a in self.assignments],
            "state": self.state,
            "digest": str(self.digest) if self.digest else None,
            "error": self.error,
        }


def parse_sync_response(raw: Any) -> SyncResponse:
    body = _obj(raw, "body")
    items = body.get("assignments") or []
    if not isinstance(items, list):
        raise ProtocolError("'assignments' must be a list")
    assignments = []
    for item in items:
        entry = _obj(item, "an assignment")
        sha = entry.get("sha256")
        if not isinstance(sha, str) or not _HEX64.match(sha):
            raise ProtocolError("'sha256' must be 64 lowercase hex characters")
        address = _address(entry.get("address"))
        if address is None:
            raise ProtocolError("'address' is required in an assignment")
        assignments.append(
            PieceAssignment(
                _int(entry, "piece", 0, MAX_PIECES),
                _str(entry, "source", limit=128),
                address,
                sha,
                entry.get("seed") is True,
            )
        )
    state = body.get("state", "running")
    if state not in TASK_STATES:
        raise ProtocolError(f"'state' must be one of {', '.join(TASK_STATES)}")
    digest = body.get("digest")
    try:
        parsed = Digest.parse(digest) if digest else None
    except DigestError as exc:
        raise ProtocolError(f"'digest': {exc}") from None
    error = body.get("error")
    return SyncResponse(assignments, state, parsed, error if isinstance(error, str) else None)


# ---------------------------------------------------------------------- errors


def error_body(code: str, message: str, **details: Any) -> dict[str, Any]:
    """The JSON body of every error answer of the supernode and peer APIs."""
    return {"error": {"code": code, "message": message, **details}}
