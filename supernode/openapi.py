"""The supernode's HTTP API as an OpenAPI document, served at ``/api/v1/openapi.json``:
the control plane (``supernode.api``) and the seed's piece server, on one port."""

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


def supernode_openapi() -> dict[str, Any]:
    """The document, built afresh (a caller may change its copy)."""
    return document(
        "swarmpull supernode",
        "The control plane (peers register, open tasks and report; the supernode names each "
        "requester's parents) and the seed's piece server. Errors are "
        '{"error": {"code", "message"}}.',
        _paths(),
        {
            "PeerRegistration": s.PEER_REGISTRATION,
            "PeerReport": s.PEER_REPORT,
            "OpenTasks": s.OPEN_TASKS,
            "TaskInfo": s.TASK_INFO,
            "ReportAnswer": s.REPORT_ANSWER,
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
                    "200": answer(
                        "registered",
                        s.obj({"heartbeat_interval": HEARTBEAT_INTERVAL}, ("heartbeat_interval",)),
                    ),
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
                    "200": answer(
                        "an answer per task, an item's error in its place",
                        s.obj(
                            {
                                "tasks": {"type": "object", "additionalProperties": _either("ReportAnswer")},
                                "heartbeat_interval": HEARTBEAT_INTERVAL,
                            },
                            ("tasks", "heartbeat_interval"),
                        ),
                    ),
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
        f"{API}/tasks": {
            "post": {
                "operationId": "openTasks",
                "summary": "create or join tasks; answers once each upstream's first answer gave the size",
                "requestBody": json_body(_ref("OpenTasks")),
                "responses": {
                    "200": answer(
                        "an answer per task, in order; an item's error (UPSTREAM_ERROR...) in its place",
                        s.obj({"tasks": {"type": "array", "items": _either("TaskInfo")}}, ("tasks",)),
                    ),
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
