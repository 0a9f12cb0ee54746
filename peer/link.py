"""The peer's client of the supernode API, with failover across supernode URLs and
requests sent to the replica that owns each task."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp

from swarmpull.core.protocol import (
    API,
    OpenTask,
    OpenTasks,
    PeerRegistration,
    PeerReport,
    ProtocolError,
    ReportAnswer,
    TaskInfo,
    parse_report_answer,
    parse_task_info,
)
from swarmpull.core.tasks import task_id_for
from swarmpull.edges.http import PEER_HEADER, error_message

log = logging.getLogger(__name__)


class SupernodeUnavailable(Exception):
    """No supernode answered."""


class LinkError(Exception):
    """A supernode answered with an error (for a whole call, or one item of a batch)."""

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

    @classmethod
    def of(cls, status: int, payload: Any) -> LinkError:
        error = payload.get("error") if isinstance(payload, dict) else None
        error = error if isinstance(error, dict) else {}
        upstream = error.get("upstream_status")
        return cls(
            status,
            str(error.get("code", "ERROR")),
            error_message(payload, f"supernode answered {status}"),
            upstream if isinstance(upstream, int) else None,
            error.get("direct") is True,
        )


_ITEM_STATUS = {"UNKNOWN_TASK": 404, "NOT_OWNER": 421, "UPSTREAM_ERROR": 502, "BAD_REQUEST": 400}


class SupernodeLink:
    """Calls the supernode API; on a connection failure or 5xx tries the next URL. A task's
    calls go to the replica that owns it once one said so (421 NOT_OWNER)."""

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
        self._owners: dict[str, str] = {}  # task -> the replica that owns it

    async def register(self, reg: PeerRegistration) -> float:
        body = await self._call("POST", f"{API}/peers", reg.to_json())
        interval = body.get("heartbeat_interval") if isinstance(body, dict) else None
        return float(interval) if isinstance(interval, int | float) and interval > 0 else 5.0

    async def leave(self) -> None:
        await self._call("DELETE", f"{API}/peers/{self._peer_id}", None, timeout=2.0)

    async def open_tasks(self, requests: list[OpenTask], timeout: float) -> list[TaskInfo | LinkError]:
        """Open tasks in as few calls as their owners allow; an item's error in its place."""
        out: dict[int, TaskInfo | LinkError] = {}
        pending = list(enumerate(requests))
        for _ in range(3):  # a redirect to an owner, then once more
            groups: dict[str | None, list[tuple[int, OpenTask]]] = {}
            for index, req in pending:
                groups.setdefault(self._owners.get(task_id_for(req.url, req.digest)), []).append((index, req))
            pending = []
            for owner, items in groups.items():
                batch = OpenTasks(self._peer_id, [r for _, r in items])
                body = await self._call("POST", f"{API}/tasks", batch.to_json(), timeout, owner)
                answers = body.get("tasks") if isinstance(body, dict) else None
                if not isinstance(answers, list) or len(answers) != len(items):
                    raise SupernodeUnavailable("the supernode answered an open with the wrong shape")
                for (index, req), answer in zip(items, answers, strict=True):
                    result = self._item(answer, parse_task_info)
                    if isinstance(result, LinkError) and self._redirected(
                        task_id_for(req.url, req.digest), answer
                    ):
                        pending.append((index, req))
                    else:
                        out[index] = result
            if not pending:
                break
        for index, _ in pending:
            out[index] = LinkError(421, "NOT_OWNER", "the task's owner keeps moving")
        return [out[i] for i in range(len(requests))]

    async def report(self, report: PeerReport) -> tuple[dict[str, ReportAnswer | LinkError], float]:
        """Report to each owner its tasks; answers per task, and the heartbeat interval."""
        groups: dict[str | None, list] = {}  # type: ignore[type-arg]
        for item in report.tasks:
            groups.setdefault(self._owners.get(item.task_id), []).append(item)
        groups.setdefault(None, [])  # the heartbeat, and the dropped tasks, go to the current one
        out: dict[str, ReportAnswer | LinkError] = {}
        interval = 5.0
        for owner, items in groups.items():
            part = PeerReport(items, report.dropped_tasks if owner is None else [])
            body = await self._call(
                "POST", f"{API}/peers/{self._peer_id}/report", part.to_json(), None, owner
            )
            answers = body.get("tasks") if isinstance(body, dict) else None
            if not isinstance(answers, dict):
                raise SupernodeUnavailable("the supernode answered a report with the wrong shape")
            value = body.get("heartbeat_interval")
            if isinstance(value, int | float) and value > 0:
                interval = float(value)
            for item in items:
                answer = answers.get(item.task_id)
                result = self._item(answer, parse_report_answer)
                self._redirected(item.task_id, answer)
                out[item.task_id] = result
        return out, interval

    def forget(self, task_id: str) -> None:
        self._owners.pop(task_id, None)

    # ------------------------------------------------------------------ internals

    def _item(self, answer: Any, parse: Any) -> Any:
        if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
            code = str(answer["error"].get("code", "ERROR"))
            return LinkError.of(_ITEM_STATUS.get(code, 500), answer)
        try:
            return parse(answer)
        except ProtocolError as exc:
            return LinkError(502, "BAD_ANSWER", f"the supernode's answer does not parse: {exc}")

    def _redirected(self, task_id: str, answer: Any) -> bool:
        """Remember an owner an answer named; True if the item should go there now."""
        error = answer.get("error") if isinstance(answer, dict) else None
        if not isinstance(error, dict) or error.get("code") != "NOT_OWNER":
            return False
        owner = error.get("owner")
        if not isinstance(owner, str) or self._owners.get(task_id) == owner.rstrip("/"):
            return False
        self._owners[task_id] = owner.rstrip("/")
        return True

    async def _call(
        self, method: str, path: str, body: Any, timeout: float | None = None, owner: str | None = None
    ) -> Any:
        """Call ``owner`` when given, else the current supernode, then the others."""
        urls = [self._urls[(self._current + i) % len(self._urls)] for i in range(len(self._urls))]
        if owner is not None:
            urls.insert(0, owner)
        failures = []
        for url in urls:
            try:
                async with self._session.request(
                    method,
                    url + path,
                    json=body,
                    headers={PEER_HEADER: self._peer_id},
                    timeout=aiohttp.ClientTimeout(total=timeout or self._timeout),
                ) as resp:
                    payload: Any = {} if resp.status == 204 else await resp.json(content_type=None)
                    if resp.status >= 500 and resp.status != 502:
                        failures.append(f"{url}: {resp.status} {error_message(payload, '')}")
                        continue
                    if url in self._urls:
                        self._current = self._urls.index(url)
                    if resp.status >= 400:
                        raise LinkError.of(resp.status, payload)
                    return payload
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                failures.append(f"{url}: {exc or type(exc).__name__}")
                if owner == url:
                    self._owners = {t: o for t, o in self._owners.items() if o != url}  # a dead owner
        raise SupernodeUnavailable("no supernode answered (" + "; ".join(failures) + ")")
