"""The peer's HTTP APIs as one OpenAPI document, served by its local API at
``/api/v1/openapi.json``: the local API (``peer.api``, on loopback) and the piece server
other nodes fetch from (on its listen address, named as a server of those paths)."""

from __future__ import annotations

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


def peer_openapi() -> dict[str, Any]:
    """The document, a copy of its own."""
    metrics = {**METRICS_PATH, "servers": [LOCAL_API, PIECE_SERVER]}
    return document(
        "swarmpull peer",
        "The local API a client (the registry proxy, `swarmpull get`) asks for blobs, and the "
        "piece server other nodes fetch pieces from. Errors are "
        '{"error": {"code", "message"}}.',
        {
            f"{API}/fetch": {
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
                        "502": answer(
                            "UPSTREAM_ERROR: the blob cannot be had (the upstream refused it, its digest "
                            "did not match...)",
                            {"$ref": "#/components/schemas/Error"},
                            headers={"X-Upstream-Status": {"type": "string", "pattern": "^[0-9]{3}$"}},
                        ),
                        **errors(_507="CACHE_FULL: no room for the blob in the piece store"),
                    },
                }
            },
            f"{API}/tasks": {
                "get": {
                    "operationId": "downloads",
                    "summary": "downloads under way (and failed ones)",
                    "responses": {"200": answer("the downloads", {"type": "array", "items": DOWNLOAD})},
                }
            },
            "/healthz": health_path(HEALTH, "200 while the daemon runs"),
            "/metrics": metrics,
            OPENAPI_PATH: OPENAPI_DOC_PATH,
            **piece_server_paths(PIECE_SERVER),
        },
        {},
    )
