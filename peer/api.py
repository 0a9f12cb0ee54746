"""The peer's local API, on loopback: "get me this blob, in order, as it lands".

    POST /api/v1/fetch   {"url", "digest"?, "headers"?, "priority"?}  ->  the blob, streamed
    GET  /api/v1/tasks                                  ->  downloads under way
    GET  /healthz, /metrics
    GET  /api/v1/openapi.json                           ->  this API and the piece server's

An error found before the first byte answers JSON (400 bad input, 502 upstream failure
with ``X-Upstream-Status``, 507 cache full); one found later cuts the connection before
the blob's last byte, so a client can never take a partial or wrong blob for a whole one.
"""

from __future__ import annotations

import logging
from typing import Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry

from peer.download import TaskDownload
from peer.openapi import peer_openapi
from peer.reader import read_blob
from swarmpull.core.blobs import BlobRequest, DownloadFailed
from swarmpull.core.protocol import API, ProtocolError, parse_open_task
from swarmpull.core.rates import Priority
from swarmpull.edges.http import json_error, read_json
from swarmpull.edges.metrics import metrics_route
from swarmpull.edges.openapi import openapi_route

log = logging.getLogger(__name__)


def parse_blob_request(raw: object) -> BlobRequest:
    """``{"url", "digest"?, "headers"?, "priority"?: "foreground" | "background"}``."""
    priority = Priority.FOREGROUND
    if isinstance(raw, dict):
        name = raw.get("priority", "foreground")
        if name not in ("foreground", "background"):
            raise ProtocolError("'priority' must be foreground or background")
        priority = Priority[name.upper()]
        raw = {k: v for k, v in raw.items() if k != "priority"} | {"peer_id": "local"}
    req = parse_open_task(raw)  # the same fields and rules as the supernode's
    return BlobRequest(req.url, req.digest, req.headers, priority)


class Downloads(Protocol):
    """What the local API needs from its daemon."""

    peer_id: str

    def ensure(self, request: BlobRequest) -> TaskDownload: ...

    def downloads(self) -> list[TaskDownload]: ...

    @property
    def registry(self) -> CollectorRegistry: ...


class LocalApi:
    def __init__(self, daemon: Downloads) -> None:
        self._daemon = daemon

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes(
            [
                web.post(f"{API}/fetch", self.fetch),
                web.get(f"{API}/tasks", self.tasks),
                web.get("/healthz", self.health),
                metrics_route(self._daemon.registry),
                openapi_route(peer_openapi()),
            ]
        )
        return app

    async def fetch(self, request: web.Request) -> web.StreamResponse:
        try:
            blob_request = parse_blob_request(await read_json(request))
        except ProtocolError as exc:
            return json_error(exc.status, "BAD_REQUEST" if exc.status == 400 else "TOO_LARGE", str(exc))
        download = self._daemon.ensure(blob_request)
        try:
            blob = await download.wait_ready()
        except DownloadFailed as exc:
            return download_error(exc)
        resp = web.StreamResponse(
            headers={"Content-Type": "application/octet-stream", "X-Swarmpull-Task": download.task_id}
        )
        resp.content_length = blob.meta.size
        await resp.prepare(request)
        try:
            async for chunk in read_blob(download):
                await resp.write(chunk)
        except DownloadFailed as exc:
            log.warning("cut %s short: %s", download.task_id, exc)
            if request.transport is not None:
                request.transport.close()
            return resp
        await resp.write_eof()
        return resp

    async def tasks(self, _: web.Request) -> web.Response:
        return web.json_response(
            [
                {
                    "task_id": d.task_id,
                    "state": d.state.value,
                    "direct": d.direct,
                    "pieces": d.blob.geometry.count if d.blob else None,
                    "verified": d.blob.verified_count if d.blob else 0,
                    "error": str(d.error) if d.error else None,
                }
                for d in self._daemon.downloads()
            ]
        )

    async def health(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "peer_id": self._daemon.peer_id})


def download_error(exc: DownloadFailed) -> web.Response:
    headers = {"X-Upstream-Status": str(exc.status)} if exc.status else {}
    if exc.cache_full:
        return json_error(507, "CACHE_FULL", str(exc))
    return json_error(502, "UPSTREAM_ERROR", str(exc), headers)
