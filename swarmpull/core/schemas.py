"""JSON Schemas of the wire types in ``protocol``, for the daemons' OpenAPI documents.

Built from the limits and patterns the parsers use, so the two cannot drift apart: a
body a schema here calls invalid is one ``parse_*`` refuses with a 400. Responses are
described as they are built by ``to_json``.
"""

from __future__ import annotations

from typing import Any

from swarmpull.core.failures import FailureReason
from swarmpull.core.fields import B64_RE, MAX_BITFIELD_TEXT, MAX_PARENTS, PEER_ID_RE
from swarmpull.core.protocol import (
    HEADER_NAME_RE,
    HEADER_VALUE_RE,
    MAX_BATCH,
    MAX_CAPABILITY,
    MAX_DROPPED,
    MAX_HEADER_VALUE,
    MAX_HEADERS,
    MAX_HOLDINGS,
    MAX_LABELS,
    MAX_SIZE,
    RESERVED_HEADERS,
    TASK_STATES,
)
from swarmpull.core.tasks import TASK_ID_RE

Schema = dict[str, Any]


def nullable(schema: Schema) -> Schema:
    """``schema`` or JSON ``null`` (the constraints of a type apply to that type only)."""
    if isinstance(schema.get("type"), str):
        return {**schema, "type": [schema["type"], "null"]}
    if "enum" in schema:
        return {**schema, "enum": [*schema["enum"], None]}
    return {"anyOf": [schema, {"type": "null"}]}


def integer(lo: int, hi: int, **extra: Any) -> Schema:
    return {"type": "integer", "minimum": lo, "maximum": hi, **extra}


def number(lo: float, hi: float, **extra: Any) -> Schema:
    return {"type": "number", "minimum": lo, "maximum": hi, **extra}


def array(items: Schema, most: int, **extra: Any) -> Schema:
    return {"type": "array", "items": items, "maxItems": most, **extra}


def obj(properties: dict[str, Schema], required: tuple[str, ...] = (), **extra: Any) -> Schema:
    return {"type": "object", "properties": properties, "required": list(required), **extra}


PEER_ID: Schema = {
    "type": "string",
    "pattern": PEER_ID_RE.pattern,
    "description": "a peer's id: letters, digits and . _ : - (at most 128)",
}
TASK_ID: Schema = {
    "type": "string",
    "pattern": TASK_ID_RE.pattern,
    "description": "sha256-<hex> for a blob of known digest, url-<sha256 of its URL> otherwise",
}
DIGEST: Schema = {"type": "string", "pattern": "^sha256:[a-f0-9]{64}$"}
BITFIELD: Schema = {
    "type": "string",
    "pattern": B64_RE.pattern,
    "maxLength": MAX_BITFIELD_TEXT,
    "description": "a set of pieces: bit p % 8 of byte p // 8 is piece p, in base64",
}
ADDRESS: Schema = {
    "type": "string",
    "pattern": "^https?://[^/?#@]+:[0-9]{1,5}/?$",
    "maxLength": 8192,
    "description": "http(s)://HOST:PORT where the node serves pieces (no path, query or user info)",
}
UPSTREAM_URL: Schema = {
    "type": "string",
    "pattern": "^https?://[^/?#]+",
    "minLength": 1,
    "maxLength": 8192,
    "description": "the blob's absolute http(s) URL upstream",
}
HEADERS: Schema = {
    "type": "object",
    "maxProperties": MAX_HEADERS,
    "propertyNames": {"pattern": HEADER_NAME_RE.pattern, "not": {"enum": sorted(RESERVED_HEADERS)}},
    "additionalProperties": {
        "type": "string",
        "maxLength": MAX_HEADER_VALUE,
        "pattern": HEADER_VALUE_RE.pattern,
    },
    "description": (
        "headers to read the upstream with (credentials): sent to that URL only, never logged; "
        "not those swarmpull sets itself (in any case): " + ", ".join(sorted(RESERVED_HEADERS))
    ),
}
KEY: Schema = {
    "type": "string",
    "pattern": B64_RE.pattern,
    "minLength": 44,
    "maxLength": 44,
    "description": "an Ed25519 public key, in base64",
}
SIZE: Schema = integer(0, MAX_SIZE)
PIECE_SIZE: Schema = integer(1, 1 << 31)

ERROR: Schema = obj(
    {
        "error": obj(
            {"code": {"type": "string"}, "message": {"type": "string"}},
            ("code", "message"),
            description="a code a client can act on, a message for people, and details",
        )
    },
    ("error",),
)

# ------------------------------------------------------------------- requests

HOLDING: Schema = obj(
    {"task_id": TASK_ID, "size": SIZE, "piece_size": PIECE_SIZE, "have": BITFIELD},
    ("task_id", "size", "piece_size"),
)
PEER_REGISTRATION: Schema = obj(
    {
        "peer_id": PEER_ID,
        "address": nullable(ADDRESS),
        "upload_slots": integer(0, 1024, default=8),
        "upload_rate": nullable(integer(1, MAX_SIZE, description="upload limit, bytes per second")),
        "labels": nullable(
            {
                "type": "object",
                "maxProperties": MAX_LABELS,
                "additionalProperties": {"type": "string", "maxLength": 128},
                "description": "topology: 'zone' and 'rack'",
            }
        ),
        "holdings": nullable(array(HOLDING, MAX_HOLDINGS)),
    },
    ("peer_id",),
    description="a peer joining, or rejoining after a restart with what it holds",
)
OPEN_TASK: Schema = obj(
    {
        "url": UPSTREAM_URL,
        "digest": nullable(DIGEST),
        "headers": nullable(HEADERS),
        "have": BITFIELD,
    },
    ("url",),
)
OPEN_TASKS: Schema = obj(
    {"peer_id": PEER_ID, "tasks": array(OPEN_TASK, MAX_BATCH, minItems=1)},
    ("peer_id", "tasks"),
    description="tasks to create or join (a node opens an image's layers at once)",
)
PARENT_STATS: Schema = obj(
    {
        "id": PEER_ID,
        "bytes": integer(0, MAX_SIZE),
        "seconds": number(0.0, 86400.0 * 30),
        "failures": integer(0, 1 << 20),
        "reason": nullable({"enum": [r.value for r in FailureReason]}),
    },
    ("id",),
)
CAPABILITY: Schema = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_CAPABILITY,
    "description": "lets the requester fetch the task's pieces: sent as X-Swarmpull-Capability",
}

TASK_REPORT: Schema = obj(
    {
        "task_id": TASK_ID,
        "have": BITFIELD,
        "parents": nullable(array(PARENT_STATS, MAX_PARENTS)),
        "drop": nullable(array(PEER_ID, MAX_PARENTS)),
        "bad": nullable(array(PEER_ID, MAX_PARENTS)),
        "capability": nullable(CAPABILITY),
    },
    ("task_id",),
)
PEER_REPORT: Schema = obj(
    {
        "tasks": nullable(array(TASK_REPORT, MAX_BATCH)),
        "dropped_tasks": nullable(array(TASK_ID, MAX_DROPPED)),
    },
    description="a report on every task the peer downloads; an empty one is a heartbeat",
)

# ------------------------------------------------------------------ responses

PARENT: Schema = obj(
    {"id": PEER_ID, "address": ADDRESS, "seed": {"const": True, "description": "only when true"}},
    ("id", "address"),
)
TASK_INFO: Schema = obj(
    {
        "task_id": TASK_ID,
        "size": SIZE,
        "piece_size": PIECE_SIZE,
        "digest": nullable(DIGEST),
        "keys": array(KEY, 64),
        "parents": array(PARENT, MAX_PARENTS),
        "report_in": number(0.0, 3600.0),
        "capability": CAPABILITY,
    },
    ("task_id", "size", "piece_size", "digest", "keys", "parents", "report_in"),
)
REPORT_ANSWER: Schema = obj(
    {
        "parents": array(PARENT, MAX_PARENTS),
        "state": {"enum": list(TASK_STATES)},
        "report_in": number(0.0, 3600.0),
        "digest": DIGEST,
        "error": {"type": "string", "description": "why the task failed"},
        "keys": array(KEY, 64),
        "capability": CAPABILITY,
    },
    ("parents", "state", "report_in"),
    description="sent several times a second to every member: what is unset is left out",
)
