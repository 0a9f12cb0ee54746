"""Wire types of the supernode API, parsed from JSON into validated dataclasses.

Every request body goes through ``parse_*`` first; a body of the wrong shape raises
``ProtocolError`` with a message that names the field, which the server answers as 400.
Responses are built from the same types with ``to_json``. Sets of pieces travel as
bitfields in base64 (``swarmpull.core.bitfield``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from swarmpull.core.digest import Digest, DigestError
from swarmpull.core.failures import FailureReason
from swarmpull.core.fields import (
    B64_RE,
    MAX_PARENTS,
    PEER_ID_RE,
    ProtocolError,
    _bitfield,
    _float,
    _int,
    _list,
    _obj,
    _optional_obj,
    _peer_id,
    _peer_ids,
    _str,
    _task_id,
    parse_address,
)
from swarmpull.core.tasks import check_upstream_url

API = "/api/v1"
MAX_CAPABILITY = 640  # core.capability's longest wire form (8 sibling hashes, a 128-character peer id)
HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")
HEADER_VALUE_RE = re.compile(r"^[^\x00-\x08\x0a-\x1f\x7f]*$")  # no control characters but tab
# The patterns above are also the OpenAPI documents' (``schemas``); they are matched with
# ``fullmatch``: Python's ``$`` also matches before a final newline.
MAX_SIZE = 1 << 50
MAX_HEADERS = 32
MAX_HEADER_VALUE = 16 * 1024
MAX_LABELS = 16
MAX_HOLDINGS = 100_000
MAX_DROPPED = 100_000
TASK_STATES = ("running", "seeded", "failed")
# Headers a client may not pass for the upstream: the reader sets them itself (framing,
# connection, ranges, encodings: a client's would garble what the seed reads for everyone),
# or they mark swarmpull's own requests (``edges.http.PEER_HEADER``).
RESERVED_HEADERS = frozenset(
    {
        "accept-encoding",
        "connection",
        "content-length",
        "expect",
        "host",
        "if-range",
        "keep-alive",
        "proxy-connection",
        "range",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "x-swarmpull-peer",
    }
)


# ---------------------------------------------------------------------- peers


@dataclass(frozen=True, slots=True)
class Holding:
    """Pieces of a blob a peer holds (a bitfield), with the geometry it holds them in."""

    task_id: str
    size: int
    piece_size: int
    have: str  # base64 bitfield

    def to_json(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "size": self.size, "piece_size": self.piece_size, "have": self.have}


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
        _int(entry, "size", 0, MAX_SIZE),
        _int(entry, "piece_size", 1, 1 << 31),
        _bitfield(entry, "have"),
    )


def parse_peer_registration(raw: Any) -> PeerRegistration:
    body = _obj(raw, "body")
    labels = _optional_obj(body.get("labels"), "'labels'")
    if len(labels) > MAX_LABELS:
        raise ProtocolError(f"'labels' may hold at most {MAX_LABELS} entries")
    for key, value in labels.items():
        if not isinstance(value, str) or len(value) > 128:
            raise ProtocolError(f"label {key!r} must be a string of at most 128 characters")
    holdings = [parse_holding(item) for item in _list(body, "holdings", MAX_HOLDINGS, "holdings")]
    holdings = list({h.task_id: h for h in holdings}.values())  # each task once: the last word
    return PeerRegistration(
        peer_id=_peer_id(body),
        address=parse_address(body.get("address")),
        upload_slots=_int(body, "upload_slots", 0, 1024, default=8),
        zone=labels.get("zone") or None,
        rack=labels.get("rack") or None,
        holdings=holdings,
        upload_rate=_int(body, "upload_rate", 1, MAX_SIZE) if body.get("upload_rate") is not None else None,
    )


@dataclass(frozen=True, slots=True)
class Heartbeat:
    dropped_tasks: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"dropped_tasks": self.dropped_tasks}


def parse_heartbeat(raw: Any) -> Heartbeat:
    body = _optional_obj(raw, "body")
    dropped = _list(body, "dropped_tasks", MAX_DROPPED, "task ids")
    # Each once: a task named 50,000 times was as many events to another replica's inbox.
    return Heartbeat(list(dict.fromkeys(_task_id(t, "dropped_tasks") for t in dropped)))


# ---------------------------------------------------------------------- tasks


@dataclass(frozen=True, slots=True)
class OpenTask:
    """Ask for a blob: register it with the supernode (or join it if it exists).
    ``have``: a bitfield of the pieces already held, in the task's geometry."""

    peer_id: str
    url: str
    digest: Digest | None = None
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # secrets: never logged
    have: str = ""

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"peer_id": self.peer_id, "url": self.url}
        if self.have:
            body["have"] = self.have
        if self.digest is not None:
            body["digest"] = str(self.digest)
        if self.headers:
            body["headers"] = self.headers
        return body


def parse_headers(raw: Any) -> dict[str, str]:
    headers = _optional_obj(raw, "'headers'")
    if len(headers) > MAX_HEADERS:
        raise ProtocolError(f"'headers' may hold at most {MAX_HEADERS} entries")
    for name, value in headers.items():
        if not HEADER_NAME_RE.fullmatch(name) or not isinstance(value, str):
            raise ProtocolError("'headers' must map header names to strings")
        if name.lower() in RESERVED_HEADERS:
            raise ProtocolError(f"header {name!r} is swarmpull's to set, not a client's")
        if len(value) > MAX_HEADER_VALUE or not HEADER_VALUE_RE.fullmatch(value):
            raise ProtocolError(
                f"header {name!r} has control characters or over {MAX_HEADER_VALUE} characters"
            )
    return dict(headers)


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
    return OpenTask(_peer_id(body), url, digest, parse_headers(body.get("headers")), _bitfield(body, "have"))


@dataclass(frozen=True, slots=True)
class ParentInfo:
    """A source to fetch pieces from: a peer, or the task's seed."""

    id: str
    address: str
    seed: bool = False

    def to_json(self) -> dict[str, Any]:
        if self.seed:
            return {"id": self.id, "address": self.address, "seed": True}
        return {"id": self.id, "address": self.address}


def _parents(raw: Any) -> list[ParentInfo]:
    if not isinstance(raw, list) or len(raw) > MAX_PARENTS:
        raise ProtocolError(f"'parents' must be a list of at most {MAX_PARENTS}")
    out = []
    for item in raw:
        entry = _obj(item, "a parent")
        address = parse_address(entry.get("address"))
        if address is None:
            raise ProtocolError("a parent needs an 'address'")
        out.append(ParentInfo(_peer_id(entry, "id"), address, entry.get("seed") is True))
    return out


def _keys(raw: Any) -> list[str]:
    if not isinstance(raw, list) or len(raw) > 64:
        raise ProtocolError("'keys' must be a list of at most 64 keys")
    for item in raw:
        if not isinstance(item, str) or len(item) != 44 or not B64_RE.fullmatch(item):
            raise ProtocolError("'keys' must hold Ed25519 public keys in base64")
    return list(raw)


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """A task's geometry, fixed by the supernode when it first read the upstream; the
    keys its piece statements are signed with; the requester's parents; and when to
    report next (seconds)."""

    task_id: str
    size: int
    piece_size: int
    digest: Digest | None = None  # the blob's digest, when known
    keys: list[str] = field(default_factory=list)
    parents: list[ParentInfo] = field(default_factory=list)
    report_in: float = 5.0
    capability: str | None = None  # lets this requester fetch the task's pieces (core.capability)

    def to_json(self) -> dict[str, Any]:
        body = {
            "task_id": self.task_id,
            "size": self.size,
            "piece_size": self.piece_size,
            "digest": str(self.digest) if self.digest else None,
            "keys": self.keys,
            "parents": [p.to_json() for p in self.parents],
            "report_in": self.report_in,
        }
        if self.capability:
            body["capability"] = self.capability
        return body


def parse_task_info(raw: Any) -> TaskInfo:
    body = _obj(raw, "body")
    digest = body.get("digest")
    try:
        parsed = Digest.parse(digest) if digest else None
    except DigestError as exc:
        raise ProtocolError(f"'digest': {exc}") from None
    return TaskInfo(
        task_id=_task_id(body.get("task_id"), "task_id"),
        size=_int(body, "size", 0, MAX_SIZE),
        piece_size=_int(body, "piece_size", 1, 1 << 31),
        digest=parsed,
        keys=_keys(body.get("keys") or []),
        parents=_parents(body.get("parents") or []),
        report_in=_float(body, "report_in", 0.0, 3600.0, default=5.0),
        capability=_str(body, "capability", optional=True, limit=MAX_CAPABILITY),
    )


# --------------------------------------------------------------------- report


@dataclass(frozen=True, slots=True)
class ParentStats:
    """What a requester saw of one of its parents since its last report."""

    id: str
    bytes: int = 0
    seconds: float = 0.0
    failures: int = 0
    reason: FailureReason | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "bytes": self.bytes, "seconds": self.seconds}
        if self.failures:
            body["failures"] = self.failures
            body["reason"] = self.reason.value if self.reason else None
        return body


_REASONS = {r.value: r for r in FailureReason}
_MAX_SECONDS = 86400.0 * 30


def _parent_stats(raw: Any) -> list[ParentStats]:
    """Every report carries these, so they are checked in one pass, without helpers."""
    if not isinstance(raw, list) or len(raw) > MAX_PARENTS:
        raise ProtocolError(f"'parents' must be a list of at most {MAX_PARENTS}")
    out = []
    for entry in raw:
        if not isinstance(entry, dict):
            raise ProtocolError("a 'parents' entry must be a JSON object")
        parent, size = entry.get("id"), entry.get("bytes", 0)
        seconds, failures = entry.get("seconds", 0.0), entry.get("failures", 0)
        reason = entry.get("reason")
        if not isinstance(parent, str) or not PEER_ID_RE.fullmatch(parent):
            raise ProtocolError("'id' may hold letters, digits and . _ : - (at most 128)")
        if type(size) is float and size.is_integer():
            size = int(size)  # JSON has one kind of number: 2.0 is the integer 2
        if type(failures) is float and failures.is_integer():
            failures = int(failures)
        if type(size) is not int or not 0 <= size <= MAX_SIZE:
            raise ProtocolError(f"'bytes' must be an integer from 0 to {MAX_SIZE}")
        if type(seconds) not in (int, float) or not 0.0 <= seconds <= _MAX_SECONDS:
            raise ProtocolError(f"'seconds' must be a number from 0 to {_MAX_SECONDS}")
        if type(failures) is not int or not 0 <= failures <= 1 << 20:
            raise ProtocolError(f"'failures' must be an integer from 0 to {1 << 20}")
        if reason is not None:
            reason = _REASONS.get(reason) if isinstance(reason, str) else None
            if reason is None:
                raise ProtocolError(f"'reason' must be one of {', '.join(_REASONS)}")
        out.append(ParentStats(parent, size, float(seconds), failures, reason))
    return out


@dataclass(frozen=True, slots=True)
class ReportAnswer:
    """The requester's parents now, when to report next, and the task's state."""

    parents: list[ParentInfo]
    state: str = "running"  # one of TASK_STATES
    report_in: float = 5.0
    digest: Digest | None = None
    error: str | None = None  # why the task failed
    keys: list[str] = field(default_factory=list)
    capability: str | None = None  # a fresh one, when the requester's is due for renewal

    def to_json(self) -> dict[str, Any]:
        """Sent several times a second to every member: what is unset is left out."""
        body: dict[str, Any] = {
            "parents": [p.to_json() for p in self.parents],
            "state": self.state,
            "report_in": self.report_in,
        }
        if self.digest:
            body["digest"] = str(self.digest)
        if self.error:
            body["error"] = self.error
        if self.keys:
            body["keys"] = self.keys
        if self.capability:
            body["capability"] = self.capability
        return body


def parse_report_answer(raw: Any) -> ReportAnswer:
    body = _obj(raw, "body")
    state = body.get("state", "running")
    if state not in TASK_STATES:
        raise ProtocolError(f"'state' must be one of {', '.join(TASK_STATES)}")
    digest = body.get("digest")
    try:
        parsed = Digest.parse(digest) if digest else None
    except DigestError as exc:
        raise ProtocolError(f"'digest': {exc}") from None
    error = body.get("error")
    return ReportAnswer(
        parents=_parents(body.get("parents") or []),
        state=state,
        report_in=_float(body, "report_in", 0.0, 3600.0, default=5.0),
        digest=parsed,
        error=error[:1000] if isinstance(error, str) else None,
        keys=_keys(body.get("keys") or []),
        capability=_str(body, "capability", optional=True, limit=MAX_CAPABILITY),
    )


# ---------------------------------------------------------------------- errors


def error_body(code: str, message: str, **details: Any) -> dict[str, Any]:
    """The JSON body of every error answer of the supernode and peer APIs."""
    return {"error": {"code": code, "message": message, **details}}


# --------------------------------------------------------------------- batches


MAX_BATCH = 256


@dataclass(frozen=True, slots=True)
class OpenTasks:
    """Several tasks opened in one call (a node pulls an image's layers at once)."""

    peer_id: str
    tasks: list[OpenTask]

    def to_json(self) -> dict[str, Any]:
        tasks = [{k: v for k, v in t.to_json().items() if k != "peer_id"} for t in self.tasks]
        return {"peer_id": self.peer_id, "tasks": tasks}


def parse_open_tasks(raw: Any) -> OpenTasks:
    body = _obj(raw, "body")
    peer_id = _peer_id(body)
    items = body.get("tasks")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
        raise ProtocolError(f"'tasks' must be a list of 1 to {MAX_BATCH} tasks")
    tasks = [parse_open_task(_obj(item, "a task") | {"peer_id": peer_id}) for item in items]
    return OpenTasks(peer_id, tasks)


@dataclass(frozen=True, slots=True)
class TaskReport:
    """A requester's report on one task (see ``Report``)."""

    task_id: str
    have: str = ""
    parents: list[ParentStats] = field(default_factory=list)
    drop: list[str] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)
    capability: str | None = None
    """The requester's own capability, once it is due for renewal: a replica that took
    the task over (and let nobody in yet) renews a live one it can check."""

    def to_json(self) -> dict[str, Any]:
        body = {
            "task_id": self.task_id,
            "have": self.have,
            "parents": [p.to_json() for p in self.parents],
            "drop": self.drop,
            "bad": self.bad,
        }
        if self.capability:
            body["capability"] = self.capability
        return body


@dataclass(frozen=True, slots=True)
class PeerReport:
    """A node's report on every task it is downloading, in one call; it also counts as
    a heartbeat, and names the blobs the node dropped."""

    tasks: list[TaskReport] = field(default_factory=list)
    dropped_tasks: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"tasks": [t.to_json() for t in self.tasks], "dropped_tasks": self.dropped_tasks}


def parse_peer_report(raw: Any) -> PeerReport:
    body = _optional_obj(raw, "body")
    tasks = []
    for item in _list(body, "tasks", MAX_BATCH, "task reports"):
        entry = _obj(item, "a task report")
        # Most reports carry no parents, drops or bad peers: absent (or null) costs nothing.
        parents, drop, bad = entry.get("parents"), entry.get("drop"), entry.get("bad")
        tasks.append(
            TaskReport(
                task_id=_task_id(entry.get("task_id"), "task_id"),
                have=_bitfield(entry, "have"),
                parents=_parent_stats(parents) if parents is not None else [],
                drop=_peer_ids(entry, "drop") if drop is not None else [],
                bad=_peer_ids(entry, "bad") if bad is not None else [],
                capability=_str(entry, "capability", optional=True, limit=MAX_CAPABILITY),
            )
        )
    dropped = body.get("dropped_tasks")
    if dropped is None:
        return PeerReport(tasks, [])
    return PeerReport(tasks, parse_heartbeat({"dropped_tasks": dropped}).dropped_tasks)
