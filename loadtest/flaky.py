"""An upstream registry that fails now and then (``swarmpull loadtest --flaky-upstream P``).

Each request fails with probability ``failure_rate``: half of those are answered 503 with
an OCI error body, the other half have their connection reset. A blob's is reset after a
random part of its body went out (those bytes count as egress: they left the registry and
were wasted), any other request's as soon as it arrives.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from aiohttp import web

from loadtest.registry import MiniRegistry


class FlakyRegistry(MiniRegistry):
    def __init__(self, failure_rate: float, rng: random.Random, **kwargs: Any) -> None:
        if not 0.0 <= failure_rate < 1.0:
            raise ValueError("the failure rate is a probability below 1")
        super().__init__(**kwargs)
        self.failure_rate = failure_rate
        self._rng = rng
        self.injected: Counter[str] = Counter()  # "503", "reset": failures injected

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self._rng.random() >= self.failure_rate:
            return await super()._handle(request)
        if self._rng.random() < 0.5:
            self.injected["503"] += 1
            return await self._error(request, 503, "UNAVAILABLE", "injected failure")
        self.injected["reset"] += 1
        is_blob_get = request.method == "GET" and "/blobs/" in request.path
        if not is_blob_get:
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=503)  # never sent: the connection is gone
        request["reset"] = True
        return await super()._handle(request)

    async def _send(
        self,
        request: web.Request,
        status: int,
        headers: dict[str, str],
        body: bytes | memoryview,
        blob: bool = False,
        cut: int | None = None,
    ) -> web.StreamResponse:
        if cut is None and request.get("reset"):
            cut = self._rng.randrange(len(body)) if len(body) > 1 else 0
        return await super()._send(request, status, headers, body, blob, cut)
