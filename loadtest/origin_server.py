"""An upstream HTTP server for tests and surges: serves blobs from memory and counts every
byte it sends, so "the upstream sent each byte once" is a number, not a hope.

Supports ``Range`` (as registries do) and a few faults a test can switch on per path:
a fixed status, a wrong body of the right length, a connection cut after N bytes, a
required ``Authorization`` header.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections import Counter
from dataclasses import dataclass

from aiohttp import web

from swarmpull.edges.http import HostPort, start_site

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass(slots=True)
class Fault:
    status: int | None = None  # answer this status instead of the blob
    times: int | None = None  # ... only this many times (None: always)
    corrupt: bool = False  # flip a byte in the middle of the body
    cut_after: int | None = None  # close the connection after this many body bytes (once)
    token: str | None = None  # require "Authorization: Bearer <token>"


class BlobServer:
    """Construct, ``add()`` blobs, ``await start()``; read ``bytes_sent``."""

    def __init__(
        self, listen: HostPort | None = None, chunk: int = 64 * 1024, rate: float | None = None
    ) -> None:
        self._listen = listen or HostPort("127.0.0.1", 0)
        self._chunk = chunk
        self.rate = rate  # bytes per second per response; None: as fast as it goes
        self._blobs: dict[str, bytes] = {}
        self.faults: dict[str, Fault] = {}
        self.bytes_sent = 0
        self.bytes_by_path: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self.reads: Counter[str] = Counter()  # GET requests only (HEADs ask, not read)
        self.active = 0  # requests being answered now
        self.max_active = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    def add(self, path: str, data: bytes) -> str:
        """Serve ``data`` at ``path``; returns its URL (valid once started)."""
        path = "/" + path.lstrip("/")
        self._blobs[path] = data
        return self.url + path if self.url else path

    def url_of(self, path: str) -> str:
        return self.url + "/" + path.lstrip("/")

    @staticmethod
    def digest_of(data: bytes) -> str:
        return "sha256:" + hashlib.sha256(data).hexdigest()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("GET", "/{path:.*}", self._handle)
        app.router.add_route("HEAD", "/{path:.*}", self._handle)
        self._runner, bound = await start_site(app, self._listen)
        self.url = bound.url()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            return await self._answer(request)
        finally:
            self.active -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.requests[path] += 1
        if request.method == "GET":
            self.reads[path] += 1
        data = self._blobs.get(path)
        fault = self.faults.get(path, Fault())
        if fault.token is not None and request.headers.get("Authorization") != f"Bearer {fault.token}":
            return web.json_response({"error": "unauthorized"}, status=401)
        if fault.status is not None and (fault.times is None or fault.times > 0):
            if fault.times is not None:
                fault.times -= 1
            return web.json_response({"error": "injected"}, status=fault.status)
        if data is None:
            return web.json_response({"error": "not found"}, status=404)
        start, end, status = 0, len(data), 200
        match = _RANGE.match(request.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            end = min(int(match.group(2)) + 1, len(data)) if match.group(2) else len(data)
            if start >= len(data):
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
            status = 206
        resp = web.StreamResponse(status=status, headers={"Content-Type": "application/octet-stream"})
        resp.content_length = end - start
        if status == 206:
            resp.headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        resp.headers["Accept-Ranges"] = "bytes"
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        body = memoryview(data)[start:end]
        if fault.corrupt:
            flipped = bytearray(body)
            flipped[len(flipped) // 2] ^= 0xFF
            body = memoryview(bytes(flipped))
        limit = len(body)
        if fault.cut_after is not None:
            limit = min(limit, fault.cut_after)
            fault.cut_after = None  # once: the retry gets the rest
        for pos in range(0, limit, self._chunk):
            piece = body[pos : min(pos + self._chunk, limit)]
            await resp.write(piece)
            self.bytes_sent += len(piece)
            self.bytes_by_path[path] += len(piece)
            if self.rate:
                await asyncio.sleep(len(piece) / self.rate)
        if limit < len(body):
            await asyncio.sleep(0)
            if request.transport is not None:
                request.transport.close()
            return resp
        await resp.write_eof()
        return resp
