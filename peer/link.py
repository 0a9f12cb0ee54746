"""The peer's client of the supernode API, with failover across supernode URLs."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp

from swarmpull.http import PEER_HEADER, error_message
from swarmpull.protocol import (
    API,
    Heartbeat,
    OpenTask,
    PeerRegistration,
    SyncRequest,
    SyncResponse,
    TaskInfo,
    parse_sync_response,
    parse_task_info,
)

log = logging.getLogger(__name__)


class SupernodeUnavailable(Exception):
    """No supernode answered."""


class LinkError(Exception):
    """A supernode answered with an error."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        upstream_status: int | None = None,
        direct: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.upstream_status = upstream_status
        self.direct = direct  # the supernode lets this peer read the upstream itself


class SupernodeLink:
    """Calls the supernode API; on a connection failure or 5xx tries the next URL."""

    def __init__(
        self, session: aiohttp.ClientSession, urls: tuple[str, ...], peer_id: str, timeout: float
    ) -> None:
        if not urls:
            raise ValueError("at least one supernode URL is needed")
        self._session = session
        self._urls = [u.rstrip("/") for u in urls]
        self._current = 0
        self._peer_id = peer_id
        self._timeout = timeout

    async def register(self, reg: PeerRegistration) -> float:
        body = await self._call("POST", f"{API}/peers", reg.to_json())
        interval = body.get("heartbeat_interval") if isinstance(body, dict) else None
        return float(interval) if isinstance(interval, int | float) and interval > 0 else 5.0

    async def heartbeat(self, beat: Heartbeat) -> None:
        await self._call("POST", f"{API}/peers/{self._peer_id}/heartbeat", beat.to_json())

    async def leave(self) -> None:
        await self._call("DELETE", f"{API}/peers/{self._peer_id}", None, timeout=2.0)

    async def open_task(self, req: OpenTask, timeout: float) -> TaskInfo:
        return parse_task_info(await self._call("POST", f"{API}/tasks", req.to_json(), timeout))

    async def sync(self, task_id: str, req: SyncRequest) -> SyncResponse:
        body = await self._call(
            "POST", f"{API}/tasks/{task_id}/sync", req.to_json(), self._timeout + req.wait
        )
        return parse_sync_response(body)

    async def _call(self, method: str, path: str, body: Any, timeout: float | None = None) -> Any:
        failures = []
        for attempt in range(len(self._urls)):
            url = self._urls[(self._current + attempt) % len(self._urls)]
            try:
                async with self._session.request(
                    method,
                    url + path,
                    json=body,
                    headers={PEER_HEADER: self._peer_id},
                    timeout=aiohttp.ClientTimeout(total=timeout or self._timeout),
                ) as resp:
                    if resp.status == 204:
                        payload: Any = {}
                    else:
                        payload = await resp.json(content_type=None)
                    if resp.status >= 500 and resp.status != 502:
                        failures.append(f"{url}: {resp.status} {error_message(payload, '')}")
                        continue
                    self._current = (self._current + attempt) % len(self._urls)
                    if resp.status >= 400:
                        error = payload.get("error") if isinstance(payload, dict) else None
                        error = error if isinstance(error, dict) else {}
                        upstream = resp.headers.get("X-Upstream-Status")
                        raise LinkError(
                            resp.status,
                            str(error.get("code", "ERROR")),
                            error_message(payload, f"supernode answered {resp.status}"),
                            int(upstream) if upstream and upstream.isdigit() else None,
                            error.get("direct") is True,
                        )
                    return payload
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                failures.append(f"{url}: {exc or type(exc).__name__}")
        raise SupernodeUnavailable("no supernode answered (" + "; ".join(failures) + ")")
