"""OpenAPI 3.1 documents of the daemons' HTTP APIs: the parts they share (error answers,
the piece server, health, metrics) and the route that serves a document.

Each role builds its own document (``supernode.openapi``, ``peer.openapi``) from these and
the wire schemas of ``swarmpull.core.schemas``; a test checks that every route a daemon
serves is described and every described route is served.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from swarmpull.core.capability import CAPABILITY_HEADER
from swarmpull.core.protocol import API
from swarmpull.core.schemas import BITFIELD, ERROR, TASK_ID, Schema
from swarmpull.edges.transport.server import MAP_HEADER, MAX_MAP_WAIT

OPENAPI_PATH = f"{API}/openapi.json"
OPENAPI_VERSION = "3.1.0"
ERROR_REF = {"$ref": "#/components/schemas/Error"}


def document(
    title: str, description: str, paths: dict[str, Any], schemas: dict[str, Schema]
) -> dict[str, Any]:
    """A whole OpenAPI document, a copy of its own; ``Error`` is always among its schemas."""
    return copy.deepcopy(
        {
            "openapi": OPENAPI_VERSION,
            "info": {"title": title, "version": "1", "description": description},
            "paths": paths,
            "components": {"schemas": {"Error": ERROR, **schemas}},
        }
    )


def json_body(schema: Schema, *, required: bool = True, description: str = "") -> dict[str, Any]:
    """A request body of JSON (read whole, at most 4 MiB)."""
    body: dict[str, Any] = {"required": required, "content": {"application/json": {"schema": schema}}}
    if description:
        body["description"] = description
    return body


def answer(
    description: str,
    schema: Schema | None = None,
    *,
    media: str = "application/json",
    headers: dict[str, Schema] | None = None,
) -> dict[str, Any]:
    """A response: its body (``schema`` in ``media``; none without a schema) and headers."""
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out["content"] = {media: {"schema": schema}}
    if headers:
        out["headers"] = {name: {"schema": s} for name, s in headers.items()}
    return out


def errors(**statuses: str) -> dict[str, Any]:
    """JSON error answers, ``_400="why"`` style, each ``{"error": {"code", "message"}}``."""
    return {code.lstrip("_"): answer(why, ERROR_REF) for code, why in statuses.items()}


BAD_BODY = {
    "400": answer("the body is not JSON or has the wrong shape: the message names the field", ERROR_REF),
    "413": answer("the body is larger than 4 MiB", ERROR_REF),
}


def path_param(name: str, schema: Schema, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


def health_path(body: Schema, description: str, **statuses: dict[str, Any]) -> dict[str, Any]:
    return {
        "get": {
            "operationId": "health",
            "summary": description,
            "responses": {"200": answer("serving", body), **statuses},
        }
    }


METRICS_PATH: dict[str, Any] = {
    "get": {
        "operationId": "metrics",
        "summary": "Prometheus metrics",
        "responses": {
            "200": answer("the metrics in Prometheus' text format", {"type": "string"}, media="text/plain")
        },
    }
}

OPENAPI_DOC_PATH: dict[str, Any] = {
    "get": {
        "operationId": "openapi",
        "summary": "this document",
        "responses": {"200": answer("this OpenAPI document", {"type": "object"})},
    }
}


def piece_server_paths(server: dict[str, Any] | None = None) -> dict[str, Any]:
    """The piece server's routes (``swarmpull.edges.transport.server``), served by the
    supernode's seed and by every peer; ``server``: where, when not where the document is."""
    task = path_param("task_id", TASK_ID, "the task")
    binary = {"type": "string", "format": "binary"}
    capability = {
        "name": CAPABILITY_HEADER,
        "in": "header",
        "schema": {"type": "string"},
        "description": "the capability the supernode gave the requester for this task "
        "(swarmpull.core.capability); a supernode's certificate stands for one",
    }
    refused = "no valid capability for this task (answered before whether it is held)"
    paths: dict[str, Any] = {
        "/pieces/{task_id}/map": {
            "get": {
                "operationId": "pieceMap",
                "summary": "the pieces held, and the signed sha256 of those the requester does not know",
                "description": (
                    "Binary (swarmpull.core.maps): 'SPM1', count (u32), version (u32), bitfield, "
                    "n (u32), n signed piece statements of 108 bytes. With 'wait', answered once "
                    "more pieces are held than 'after', or when the wait is over."
                ),
                "parameters": [
                    task,
                    capability,
                    {
                        "name": "known",
                        "in": "query",
                        "schema": BITFIELD,
                        "description": "pieces whose sha256 the requester holds",
                    },
                    {
                        "name": "after",
                        "in": "query",
                        "schema": {"type": "integer"},
                        "description": "the version last seen (default -1: none)",
                    },
                    {
                        "name": "wait",
                        "in": "query",
                        "schema": {"type": "number"},
                        "description": f"seconds to wait for more pieces, at most {MAX_MAP_WAIT:g}",
                    },
                ],
                "responses": {
                    "200": answer("the piece map", binary, media="application/octet-stream"),
                    **errors(_400="a bad task id or query", _403=refused, _404="the task is not held here"),
                },
            }
        },
        "/pieces/{task_id}/{piece}": {
            "get": {
                "operationId": "piece",
                "summary": "a verified piece's bytes (zstd when it pays and Accept-Encoding allows)",
                "parameters": [
                    task,
                    path_param("piece", {"type": "string", "pattern": "^[0-9]{1,9}$"}, "the piece's index"),
                    capability,
                    {
                        "name": "Accept-Encoding",
                        "in": "header",
                        "schema": {"type": "string"},
                        "description": "with zstd, the piece may come compressed",
                    },
                ],
                "responses": {
                    "200": answer(
                        "the piece",
                        binary,
                        media="application/octet-stream",
                        headers={
                            MAP_HEADER: {**BITFIELD, "description": "the pieces held now"},
                            "Content-Encoding": {"enum": ["zstd"]},
                        },
                    ),
                    **errors(
                        _400="a bad task id, or a piece out of range",
                        _403=refused,
                        _404="the piece is not held here (at the seed: or peers hold it)",
                        _429="every upload slot is busy and the line for one is full, or (at the "
                        "seed) the piece went out to peers a moment ago: retry later",
                        _503="the node is stopping",
                    ),
                },
            }
        },
    }
    if server is not None:
        for item in paths.values():
            item["servers"] = [server]
    return paths


def openapi_route(build: Callable[[], dict[str, Any]]) -> web.RouteDef:
    """``GET /api/v1/openapi.json``: the document ``build`` makes. Built and serialized on
    the first request, once per process: building takes tens of milliseconds, which a
    daemon that is never asked (and a load test's hundreds of nodes) should not pay at start."""

    async def handle(_: web.Request) -> web.Response:
        return web.Response(body=_serialized(build), content_type="application/json")

    return web.get(OPENAPI_PATH, handle)


@functools.cache
def _serialized(build: Callable[[], dict[str, Any]]) -> bytes:
    return json.dumps(build(), indent=1).encode()
