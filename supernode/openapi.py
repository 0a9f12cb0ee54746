"""The supernode's HTTP API as an OpenAPI document, served at ``/api/v1/openapi.json``:
the control plane (``supernode.api``), its control channel (``supernode.channel``: the
route, and its messages as the schemas ChannelCall and ChannelAnswer, since OpenAPI has
no words for WebSocket messages) and the seed's piece server, on one port."""

from __future__ import annotations

from typing import Any

from swarmpull.core import schemas as s
from swarmpull.core.protocol import API
from swarmpull.edges.openapi import (
    BAD_BODY,
    ERROR_REF,
    METRICS_PATH,
    OPENAPI_DOC_PATH,
    OPENAPI_PATH,
    answer,
    document,
    errors,
    health_path,
    json_body,
    path_param,
    piece_server_paths,
)

UNAVAILABLE = errors(_503="shared state (Redis) unreachable, or this supernode is stopping: ask another")
PEER = path_param("peer", s.PEER_ID, "the peer's id")
TASK = path_param("task", s.TASK_ID, "the task")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _either(name: str) -> dict[str, Any]:
    """An item of a batch: its answer, or its error in its place."""
    return {"anyOf": [_ref(name), ERROR_REF]}


TASK_STATUS = s.obj(
    {
        "task_id": s.TASK_ID,
        "state": {"enum": ["pending", "running", "partial", "seeded", "failed"]},
        "url": {"type": "string", "description": "without credentials or query string"},
        "size": s.nullable(s.SIZE),
        "piece_size": s.nullable(s.PIECE_SIZE),
        "pieces": s.nullable({"type": "integer", "minimum": 0}),
        "pieces_seeded": {"type": "integer", "minimum": 0},
        "digest": s.nullable(s.DIGEST),
        "error": s.nullable({"type": "string"}),
    },
    ("task_id", "state", "url", "size", "piece_size", "pieces", "pieces_seeded", "digest", "error"),
)
HEALTH = s.obj(
    {
        "status": {"enum": ["ok", "degraded"]},
        "tasks": {"type": "integer", "minimum": 0},
        "redis": {"enum": ["ok", "unreachable"]},
    },
    ("status", "tasks"),
)
HEARTBEAT_INTERVAL = {"type": "number", "minimum": 0, "description": "seconds between reports"}
# The answers of the operations, the same on the REST routes and on the control channel.
REGISTERED = s.obj({"heartbeat_interval": HEARTBEAT_INTERVAL}, ("heartbeat_interval",))
REPORTED = s.obj(
    {
        "tasks": {"type": "object", "additionalProperties": _either("ReportAnswer")},
        "heartbeat_interval": HEARTBEAT_INTERVAL,
    },
    ("tasks", "heartbeat_interval"),
    description="an answer per task reported on, an item's error in its place",
)
OPENED = s.obj(
    {"tasks": {"type": "array", "items": _either("TaskInfo")}},
    ("tasks",),
    description="an answer per task, in order; an item's error (UPSTREAM_ERROR...) in its place",
)
CHANNEL_ID = {"type": "integer", "description": "the caller's number for the call, echoed in its answer"}


def _call(op: str, body: dict[str, Any] | None) -> dict[str, Any]:
    properties: dict[str, Any] = {"id": CHANNEL_ID, "op": {"const": op}}
    if body is not None:
        properties["body"] = body
    return s.obj(properties, ("id", "op", "body") if op in ("register", "open") else ("id", "op"))


CHANNEL_CALL = {
    "oneOf": [
        _call("register", _ref("PeerRegistration")),
        _call("open", _ref("OpenTasks")),
        _call("report", s.nullable(_ref("PeerReport"))),
        _call("leave", None),
    ],
    "description": "a call on the control channel: a text frame of JSON",
}
CHANNEL_ANSWER = {
    "oneOf": [
        s.obj(
            {
                "id": CHANNEL_ID,
                "body": {
                    "anyOf": [*map(_ref, ("Registered", "Opened", "Reported")), s.obj({}, maxProperties=0)],
                    "description": "the call's answer, as its REST route's (leave: {})",
                },
            },
            ("id", "body"),
        ),
        s.obj(
            {"id": s.nullable(CHANNEL_ID), "error": s.ERROR["properties"]["error"]},
            ("id", "error"),
            description="the call's error, as its REST route's; id null when the message had none",
        ),
    ],
    "description": "an answer on the control channel: opens may be answered out of order",
}


def supernode_openapi() -> dict[str, Any]:
    """The document, built afresh (a caller may change its copy)."""
    return document(
        "swarmpull supernode",
        "The control plane (peers register, open tasks and report, over REST or their control "
        "channel; the supernode names each requester's parents) and the seed's piece server. Errors are "
        '{"error": {"code", "message"}}.',
        _paths(),
        {
            "PeerRegistration": s.PEER_REGISTRATION,
            "PeerReport": s.PEER_REPORT,
            "OpenTasks": s.OPEN_TASKS,
            "TaskInfo": s.TASK_INFO,
            "ReportAnswer": s.REPORT_ANSWER,
            "Registered": REGISTERED,
            "Opened": OPENED,
            "Reported": REPORTED,
            "ChannelCall": CHANNEL_CALL,
            "ChannelAnswer": CHANNEL_ANSWER,
        },
    )


def _paths() -> dict[str, Any]:
    return {
        f"{API}/peers": {
            "post": {
                "operationId": "register",
                "summary": "register (or re-register) a peer, with the pieces it holds",
                "requestBody": json_body(_ref("PeerRegistration")),
                "responses": {
                    "200": answer("registered", _ref("Registered")),
                    **BAD_BODY,
                    **UNAVAILABLE,
                },
            }
        },
        f"{API}/peers/{{peer}}/report": {
            "post": {
                "operationId": "report",
                "summary": "report on every task the peer downloads (none: a heartbeat)",
                "parameters": [PEER],
                "requestBody": json_body(_ref("PeerReport"), required=False),
                "responses": {
                    "200": answer("an answer per task, an item's error in its place", _ref("Reported")),
                    **BAD_BODY,
                    **errors(_404="UNKNOWN_PEER: register again"),
                    **UNAVAILABLE,
                },
            }
        },
        f"{API}/peers/{{peer}}": {
            "delete": {
                "operationId": "leave",
                "summary": "the peer leaves the swarm",
                "parameters": [PEER],
                "responses": {"204": answer("gone (or never known)"), **errors(_400="a bad peer id")},
            }
        },
        f"{API}/peers/{{peer}}/channel": {
            "get": {
                "operationId": "channel",
                "summary": "the control channel: register, open, report and leave over one WebSocket",
                "description": (
                    "What peers use: a call costs a third of an HTTP request, and an open channel "
                    "is the peer's heartbeat. Each text frame is a ChannelCall, answered by a "
                    "ChannelAnswer with its id (opens out of order, the rest in order); the bodies "
                    "are the REST routes'. A binary frame closes the channel (1003), as does a "
                    "frame larger than 4 MiB (1009)."
                ),
                "parameters": [PEER],
                "responses": {
                    "101": answer("the WebSocket: ChannelCall messages in, ChannelAnswer messages out"),
                    **errors(_400="not a WebSocket handshake, or a bad peer id"),
                },
            }
        },
        f"{API}/tasks": {
            "post": {
                "operationId": "openTasks",
                "summary": "create or join tasks; answers once each upstream's first answer gave the size",
                "requestBody": json_body(_ref("OpenTasks")),
                "responses": {
                    "200": answer("an answer per task, in order", _ref("Opened")),
                    **BAD_BODY,
                    **errors(_404="UNKNOWN_PEER: register again"),
                    **UNAVAILABLE,
                },
            }
        },
        f"{API}/tasks/{{task}}": {
            "get": {
                "operationId": "taskStatus",
                "summary": "a task's status (no credentials)",
                "parameters": [TASK],
                "responses": {
                    "200": answer("the task's status", TASK_STATUS),
                    **errors(_400="a bad task id", _404="UNKNOWN_TASK: not known here"),
                },
            }
        },
        "/healthz": health_path(
            HEALTH, "200 when this supernode can serve", **errors(_503="Redis unreachable")
        ),
        "/metrics": METRICS_PATH,
        OPENAPI_PATH: OPENAPI_DOC_PATH,
        **piece_server_paths(),
    }
