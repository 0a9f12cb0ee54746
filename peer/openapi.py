"""The peer's HTTP APIs as one OpenAPI document, served by its local API at
``/api/v1/openapi.json``: the local API (``peer.api``, on loopback) and the piece server
other nodes fetch from (on its listen address, named as a server of those paths)."""

from __future__ import annotations

import copy
from typing import Any

from peer.download import DownloadState
from swarmpull.core import schemas as s
from swarmpull.core.protocol import API
from swarmpull.edges.openapi import (
    BAD_BODY,
    METRICS_PATH,
    OPENAPI_DOC_PATH,
    OPENAPI_PATH,
    answer,
    document,
    errors,
    health_path,
    json_body,
    piece_server_paths,
)

LOCAL_API = {"url": "/", "description": "the local API (--api-listen, loopback), where this document is"}
PIECE_SERVER = {
    "url": "{address}",
    "description": "the piece server, at the address the peer advertises (--listen, --advertise)",
    "variables": {"address": {"default": "http://127.0.0.1:7001"}},
}

BLOB_REQUEST = s.obj(
    {
        "url": s.UPSTREAM_URL,
        "digest": s.nullable(s.DIGEST),
        "headers": s.nullable(s.HEADERS),
        "priority": {"enum": ["foreground", "background"], "default": "foreground"},
    },
    ("url",),
    description="a blob: where it is upstream, its digest when known, the headers to read it",
)
DOWNLOAD = s.obj(
    {
        "task_id": s.TASK_ID,
        "state": {"enum": [state.value for state in DownloadState]},
        "direct": {"type": "boolean", "description": "read from upstream directly"},
        "pieces": s.nullable({"type": "integer", "minimum": 0}),
        "verified": {"type": "integer", "minimum": 0},
        "error": s.nullable({"type": "string"}),
    },
    ("task_id", "state", "direct", "pieces", "verified", "error"),
)
HEALTH = s.obj({"status": {"const": "ok"}, "peer_id": s.PEER_ID}, ("status", "peer_id"))
STORED_FILE = s.obj(
    {
        "task_id": s.TASK_ID,
        "path": {"type": "string", "description": "the verified blob in the store, pinned for a minute"},
        "size": s.SIZE,
        "digest": s.nullable(s.DIGEST),
        "cpu_seconds": {"type": "number", "minimum": 0},
    },
    ("task_id", "path", "size", "digest", "cpu_seconds"),
)
# The local API answers loopback clients only, and nothing a web page can send it.
NOT_LOCAL = errors(_403="FORBIDDEN: a Host that is not a loopback name, or an Origin (a web page)")
NOT_JSON = errors(_415="UNSUPPORTED_MEDIA_TYPE: a POST must be application/json")
CACHE_FULL = errors(_507="CACHE_FULL: no room for the blob in the piece store")
UPSTREAM_ERROR = answer(
    "UPSTREAM_ERROR: the blob cannot be had (the upstream refused it, its digest did not match...)",
    {"$ref": "#/components/schemas/Error"},
    headers={"X-Upstream-Status": {"type": "string", "pattern": "^[0-9]{3}$"}},
)


def _local(path: dict[str, Any]) -> dict[str, Any]:
    """A path of the local API (a copy), with the answers of its guard (``peer.api.local_only``)."""
    path = copy.deepcopy(path)
    for method, operation in path.items():
        if method in ("get", "post"):
            operation["responses"].update(NOT_LOCAL, **(NOT_JSON if method == "post" else {}))
    return path


def peer_openapi() -> dict[str, Any]:
    """The document, a copy of its own."""
    local = {f"{API}/{name}": item for name, item in _local_api().items()}
    paths = {
        **{path: _local(item) for path, item in local.items()},
        "/healthz": _local(health_path(HEALTH, "200 while the daemon runs")),
        OPENAPI_PATH: _local(OPENAPI_DOC_PATH),
        # On both servers: the guard's answers are the local API's.
        "/metrics": _local({**METRICS_PATH, "servers": [LOCAL_API, PIECE_SERVER]}),
        **piece_server_paths(PIECE_SERVER),
    }
    return document(
        "swarmpull peer",
        "The local API a client (the registry proxy, `swarmpull get`) asks for blobs, and the "
        "piece server other nodes fetch pieces from. Errors are "
        '{"error": {"code", "message"}}.',
        paths,
        {},
    )


def _local_api() -> dict[str, Any]:
    return {
        "fetch": {
            "post": {
                "operationId": "fetch",
                "summary": "a blob, streamed in order as its verified pieces land",
                "description": (
                    "An error found before the first byte answers JSON; one found later cuts "
                    "the connection before the blob's last byte."
                ),
                "requestBody": json_body(BLOB_REQUEST),
                "responses": {
                    "200": answer(
                        "the blob",
                        {"type": "string", "format": "binary"},
                        media="application/octet-stream",
                        headers={"X-Swarmpull-Task": s.TASK_ID},
                    ),
                    **BAD_BODY,
                    "502": UPSTREAM_ERROR,
                    **CACHE_FULL,
                },
            }
        },
        "file": {
            "post": {
                "operationId": "file",
                "summary": "the verified blob's path in the store, once complete, for a client on this host",
                "description": (
                    "What `swarmpull get` copies the blob from; the daemon never writes anywhere "
                    "a request names."
                ),
                "requestBody": json_body(BLOB_REQUEST),
                "responses": {
                    "200": answer("where the blob is", STORED_FILE),
                    **BAD_BODY,
                    "502": UPSTREAM_ERROR,
                    **CACHE_FULL,
                },
            }
        },
        "tasks": {
            "get": {
                "operationId": "downloads",
                "summary": "downloads under way (and failed ones)",
                "responses": {"200": answer("the downloads", {"type": "array", "items": DOWNLOAD})},
            }
        },
    }
