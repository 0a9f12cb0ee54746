"""The peer's client of the supernode API, with failover across supernode URLs."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp

from swarmpull.core.protocol import (
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
from swarmpull.core.tasks import task_id_for
from swarmpull.edges.http import PEER_HEADER, error_message

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
        self._owners: dict[str, str] = {}  # task -> the replica that owns it (421 NOT_OWNER)

    async def register(self, reg: PeerRegistration) -> float:
        body = await self._call("POST", f"{API}/peers", reg.to_json())
        interval = body.get("heartbeat_interval") if isinstance(body, dict) else None
        return float(interval) if isinstance(interval, int | float) and interval > 0 else 5.0

    async def heartbeat(self, beat: Heartbeat) -> None:
        await self._call("POST", f"{API}/peers/{self._peer_id}/heartbeat", beat.to_json())

    async def leave(self) -> None:
        await self._call("DELETE", f"{API}/peers/{self._peer_id}", None, timeout=2.0)

    async def open_task(self, req: OpenTask, timeout: float) -> TaskInfo:
        task_id = task_id_for(req.url, req.digest)
        body = await self._call("POST", f"{API}/tasks", req.to_json(), timeout, task_id)
        return parse_task_info(body)

    async def sync(self, task_id: str, req: SyncRequest) -> SyncResponse:
        body = await self._call(
            "POST", f"{API}/tasks/{task_id}/sync", req.to_json(), self._timeout + req.wait, task_id
        )
        return parse_sync_response(body)

    async def _call(
        self, method: str, path: str, body: Any, timeout: float | None = None, task_id: str | None = None
    ) -> Any:
        """Call the owner of ``task_id`` when one is known (replicas answer 421 NOT_OWNER
        with its URL), else the current supernode, then the others."""
        owner = self._owners.get(task_id) if task_id else None
        urls = [self._urls[(self._current + i) % len(self._urls)] for i in range(len(self._urls))]
        if owner is not None:
            urls.insert(0, owner)
        failures = []
        while urls:
            url = urls.pop(0)
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
                    error = payload.get("error") if isinstance(payload, dict) else None
                    error = error if isinstance(error, dict) else {}
                    if resp.status == 421 and task_id and isinstance(error.get("owner"), str):
                        target = error["owner"].rstrip("/")
                        if self._owners.get(task_id) != target and len(failures) < 2 * len(self._urls):
                            self._owners[task_id] = target  # ask the owner next
                            urls.insert(0, target)
                        failures.append(f"{url}: {error_message(payload, 'not the owner')}")
                        continue
                    if resp.status >= 500 and resp.status != 502:
                        failures.append(f"{url}: {resp.status} {error_message(payload, '')}")
                        continue
                    if url in self._urls:
                        self._current = self._urls.index(url)
                    if resp.status >= 400:
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
                if task_id and self._owners.get(task_id) == url:
                    del self._owners[task_id]  # a dead owner: another replica will take over
        raise SupernodeUnavailable("no supernode answered (" + "; ".join(failures) + ")")
