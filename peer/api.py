"""The peer's local API, on loopback: "get me this blob, in order, as it lands".

    POST /api/v1/fetch   {"url", "digest"?, "headers"?, "priority"?}  ->  the blob, streamed
    POST /api/v1/file    (the same)  ->  {"path", "size", "digest", "cpu_seconds"} of the
                         verified blob in the store, once complete, pinned for a while
    GET  /api/v1/tasks                                  ->  downloads under way
    GET  /api/v1/tasks/{task}        ->  its latest download: bytes by source, bypass, error
    GET  /healthz                    ->  200 while the daemon runs (liveness)
    GET  /readyz                     ->  200 once registered with a supernode, else 503
    GET  /metrics
    GET  /api/v1/openapi.json        ->  this API and the piece server's

A client that hangs up is a client gone: when the last one reading a download leaves
before it ends, the download is cancelled (``PeerDaemon.requested``).

``/file`` is for ``swarmpull get`` on the same host: it copies the verified file from the
store with ``copy_file_range`` instead of streaming it through this API again. The daemon
never writes anywhere a request names; the caller copies, with its own rights.

The API fetches any URL it is given, so it answers loopback clients only, and nothing a
browser page can send it: a request whose ``Host`` is not a loopback name (a DNS
rebinding page reaching 127.0.0.1 under its own name), or that carries an ``Origin``
(any page's request), is refused; a POST must be ``application/json``, which a page
cannot send cross-origin without a preflight this API never answers.

An error found before the first byte answers JSON (400 bad input, 502 upstream failure
with ``X-Upstream-Status``, 507 cache full); one found later cuts the connection before
the blob's last byte, so a client can never take a partial or wrong blob for a whole one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry

from peer.download import TaskDownload
from peer.openapi import peer_openapi
from peer.reader import read_blob
from swarmpull.core.blobs import BlobRequest, DownloadFailed
from swarmpull.core.fields import ProtocolError
from swarmpull.core.protocol import API, parse_open_task
from swarmpull.core.rates import Priority
from swarmpull.edges.http import json_error, read_json
from swarmpull.edges.metrics import metrics_route
from swarmpull.edges.openapi import openapi_route
from swarmpull.edges.store import PieceCorrupt, PieceStore, StoredBlob

log = logging.getLogger(__name__)

FILE_PIN = 60.0  # seconds a blob handed out by path stays pinned (the caller opens it at once)
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def loopback_host(host: str) -> bool:
    """Whether a ``Host`` header names this machine's loopback (an IP in 127/8, ::1 or
    localhost), with or without a port."""
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1 : name.find("]")] if "]" in name else name
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name in _LOOPBACK_NAMES:
        return True
    parts = name.split(".")
    return (
        len(parts) == 4
        and parts[0] == "127"
        and all(p.isascii() and p.isdigit() and int(p) < 256 for p in parts)
    )


@web.middleware
async def local_only(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Refuse what a web page could send (see the module docstring)."""
    if not loopback_host(request.headers.get("Host", "")):
        return json_error(403, "FORBIDDEN", "the local API answers loopback host names only")
    if "Origin" in request.headers:
        return json_error(403, "FORBIDDEN", "the local API does not answer web pages")
    if request.method == "POST" and request.content_type != "application/json":
        return json_error(415, "UNSUPPORTED_MEDIA_TYPE", "the local API takes application/json only")
    return await handler(request)


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

    def requested(self, request: BlobRequest) -> contextlib.AbstractContextManager[TaskDownload]: ...

    async def authorize(self, request: BlobRequest) -> None: ...

    def downloads(self) -> list[TaskDownload]: ...

    def summary(self, task_id: str) -> dict[str, Any] | None: ...

    @property
    def ready(self) -> bool: ...

    @property
    def registry(self) -> CollectorRegistry: ...


class LocalApi:
    def __init__(self, daemon: Downloads) -> None:
        self._daemon = daemon

    def app(self) -> web.Application:
        app = web.Application(middlewares=[local_only])
        app.add_routes(
            [
                web.post(f"{API}/fetch", self.fetch),
                web.post(f"{API}/file", self.file),
                web.get(f"{API}/tasks", self.tasks),
                web.get(f"{API}/tasks/{{task}}", self.task),
                web.get("/healthz", self.health),
                web.get("/readyz", self.readiness),
                metrics_route(self._daemon.registry),
                openapi_route(peer_openapi),
            ]
        )
        return app

    async def fetch(self, request: web.Request) -> web.StreamResponse:
        try:
            blob_request = parse_blob_request(await read_json(request))
        except ProtocolError as exc:
            return json_error(exc.status, exc.code, str(exc))
        try:
            await self._daemon.authorize(blob_request)
        except DownloadFailed as exc:
            return download_error(exc)
        with self._daemon.requested(blob_request) as download:
            return await self._stream(request, download)

    async def _stream(self, request: web.Request, download: TaskDownload) -> web.StreamResponse:
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

    async def file(self, request: web.Request) -> web.Response:
        """The verified blob's path in the store, once it is complete."""
        started = _cpu_seconds()
        try:
            blob_request = parse_blob_request(await read_json(request))
        except ProtocolError as exc:
            return json_error(exc.status, exc.code, str(exc))
        try:
            await self._daemon.authorize(blob_request)
        except DownloadFailed as exc:
            return download_error(exc)
        for _ in range(2):  # a blob the disk changed since a restart is dropped: once more
            with self._daemon.requested(blob_request) as download:
                try:
                    blob = await _complete_unless_gone(request, download)
                except DownloadFailed as exc:
                    return download_error(exc)
                if blob is None:  # an answer for nobody: the client has left
                    return json_error(503, "CLIENT_GONE", "the client left before the blob was complete")
                store = download.store
                if not await _checked(store, blob):
                    continue
            break
        else:
            return json_error(502, "UPSTREAM_ERROR", "the blob on disk no longer hashes to its pieces")
        if blob.removed or not blob.complete:
            return json_error(502, "UPSTREAM_ERROR", "the blob left the store before it could be handed out")
        blob.pins += 1  # released after FILE_PIN: the caller has the file open by then
        asyncio.get_running_loop().call_later(FILE_PIN, _unpin, blob)
        blob.touch()
        return web.json_response(
            {
                "task_id": blob.task_id,
                "path": str(store.data_path(blob.task_id)),
                "size": blob.meta.size,
                "digest": blob.meta.digest,
                "cpu_seconds": round(_cpu_seconds() - started, 3),
            }
        )

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

    async def task(self, request: web.Request) -> web.Response:
        summary = self._daemon.summary(request.match_info["task"])
        if summary is None:
            return json_error(404, "NOT_FOUND", "no recent download of this task")
        return web.json_response(summary)

    async def health(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "peer_id": self._daemon.peer_id})

    async def readiness(self, _: web.Request) -> web.Response:
        ready = self._daemon.ready
        body = {"status": "ready" if ready else "not registered with a supernode yet"}
        return web.json_response(body, status=200 if ready else 503)


def download_error(exc: DownloadFailed) -> web.Response:
    headers = {"X-Upstream-Status": str(exc.status)} if exc.status else {}
    if exc.cache_full:
        return json_error(507, "CACHE_FULL", str(exc))
    if exc.denied:
        return json_error(403, "PULL_DENIED", str(exc), headers)
    return json_error(502, "UPSTREAM_ERROR", str(exc), headers)


async def _complete_unless_gone(request: web.Request, download: TaskDownload) -> StoredBlob | None:
    """The download's blob once complete; None as soon as the client has hung up (then
    ``requested`` cancels a download nobody else wants). aiohttp does not cancel a handler
    whose client left, and this one writes nothing until the end: the connection is
    looked at twice a second."""
    waiting = asyncio.ensure_future(download.wait_complete())
    try:
        while not waiting.done():
            await asyncio.wait({waiting}, timeout=0.5)
            transport = request.transport
            if not waiting.done() and (transport is None or transport.is_closing()):
                return None
        return waiting.result()
    finally:
        waiting.cancel()


async def _checked(store: PieceStore, blob: StoredBlob) -> bool:
    """Whether every piece of ``blob`` hashed right since this daemon started: the file
    is handed out whole, past the piece checks a read makes (a blob kept from before a
    restart has pieces the scrubber has not re-hashed yet). False: the store dropped it."""
    if not blob.unchecked:
        return True
    try:
        with store.pinned(blob):
            await asyncio.to_thread(blob.check_all)
    except PieceCorrupt as exc:
        log.warning("%s", exc)
        return False
    return True


def _unpin(blob: StoredBlob) -> None:
    blob.pins -= 1


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system
