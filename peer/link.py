"""The peer's client of the supernode API, with failover across supernode URLs and
requests sent to the replica that owns each task.

Calls travel over a control channel per supernode (a WebSocket, ``supernode/channel.py``)
that stays open: a call costs the supernode a third of an HTTP request, and the open
channel is this node's heartbeat."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp

from swarmpull.core.fields import ProtocolError
from swarmpull.core.protocol import (
    API,
    OpenTask,
    OpenTasks,
    PeerRegistration,
    PeerReport,
    ReportAnswer,
    TaskInfo,
    parse_report_answer,
    parse_task_info,
)
from swarmpull.core.tasks import task_id_for
from swarmpull.edges.http import PEER_HEADER, error_message

log = logging.getLogger(__name__)

T = TypeVar("T")


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
        detail: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.upstream_status = upstream_status
        self.direct = direct  # the supernode lets this peer read the upstream itself
        self.detail = detail or {}  # the error's other fields, as the supernode sent them

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
            error,
        )


# What a call that got no answer raises: the next supernode is tried.
UNANSWERED = (TimeoutError, aiohttp.ClientError, SupernodeUnavailable, ValueError)


class Failover:
    """The supernode URLs, each tried in turn from the one that answered last: a call
    moves on after a connection failure or a 5xx (but 502: the upstream's), and stays
    with a supernode that answered, error or not."""

    def __init__(self, urls: tuple[str, ...]) -> None:
        if not urls:
            raise ValueError("at least one supernode URL is needed")
        self.urls = [u.rstrip("/") for u in urls]
        self._current = 0

    def __repr__(self) -> str:
        return f"<Failover {self.urls[self._current]} first of {len(self.urls)}>"

    async def call(self, attempt: Callable[[str], Awaitable[T]], first: str | None = None) -> T:
        """``attempt(url)`` at ``first`` (a task's owner), then at each URL in turn, until
        a supernode answers: its answer, or the LinkError it answered with;
        SupernodeUnavailable when none answered."""
        urls = [self.urls[(self._current + i) % len(self.urls)] for i in range(len(self.urls))]
        if first is not None:
            urls.insert(0, first)
        failures = []
        for url in urls:
            try:
                result = await attempt(url)
            except LinkError as exc:
                if exc.status >= 500 and exc.status != 502:
                    failures.append(f"{url}: {exc.status} {exc}")
                    continue
                self._answered(url)
                raise
            except UNANSWERED as exc:
                failures.append(f"{url}: {exc or type(exc).__name__}")
                continue
            self._answered(url)
            return result
        raise SupernodeUnavailable("no supernode answered (" + "; ".join(failures) + ")")

    def _answered(self, url: str) -> None:
        if url in self.urls:  # an owner outside the list leaves the turn as it was
            self._current = self.urls.index(url)


_ITEM_STATUS = {
    "BAD_REQUEST": 400,
    "UNAUTHENTICATED": 401,
    "FORBIDDEN": 403,
    "UNKNOWN_PEER": 404,
    "UNKNOWN_TASK": 404,
    "UPSTREAM_REFUSED": 403,
    "PULL_DENIED": 403,
    "TOO_LARGE": 413,
    "NOT_OWNER": 421,
    "TOO_MANY_TASKS": 429,
    "INTERNAL": 500,
    "UPSTREAM_ERROR": 502,
    "REGISTRY_REFUSED": 502,
    "NOT_ANSWERED": 503,
    "CLUSTER_UNAVAILABLE": 503,
    "SHUTTING_DOWN": 503,
}


class _Channel:
    """One open control channel to one supernode: calls go out as messages, answers come
    back by id (opens out of order). A broken channel fails its calls under way with
    SupernodeUnavailable; the next call opens a new one."""

    def __init__(
        self, session: aiohttp.ClientSession, url: str, peer_id: str, tls_args: dict[str, Any] | None = None
    ) -> None:
        self._session = session
        self._tls_args = tls_args or {}
        self._url = f"{url}{API}/peers/{peer_id}/channel"
        self._peer_id = peer_id
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._next = itertools.count(1)
        self._lock = asyncio.Lock()

    async def call(self, op: str, body: Any, timeout: float) -> Any:
        ws = await self._connect(timeout)
        ident = next(self._next)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        try:
            await ws.send_json({"id": ident, "op": op, "body": body})
            async with asyncio.timeout(timeout):
                reply = await future
        finally:
            self._waiting.pop(ident, None)
        if isinstance(reply, dict) and "error" in reply:
            code = str(reply["error"].get("code", "ERROR")) if isinstance(reply["error"], dict) else "ERROR"
            raise LinkError.of(_ITEM_STATUS.get(code, 500), reply)
        return reply.get("body") if isinstance(reply, dict) else None

    async def _connect(self, timeout: float) -> aiohttp.ClientWebSocketResponse:
        async with self._lock:
            if self.open and self._ws is not None:
                return self._ws
            self._ws = await self._session.ws_connect(
                self._url,
                headers={PEER_HEADER: self._peer_id},
                timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
                receive_timeout=None,
                autoping=True,
                max_msg_size=16 << 20,
                heartbeat=None,
                **self._tls_args,
            )
            self._reader = asyncio.create_task(self._read(self._ws), name="control-channel")
            return self._ws

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    break
                try:
                    reply = json.loads(msg.data)
                except ValueError:
                    break
                future = self._waiting.get(reply.get("id")) if isinstance(reply, dict) else None
                if future is not None and not future.done():
                    future.set_result(reply)
        finally:
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(SupernodeUnavailable(f"the channel to {self._url} closed"))

    @property
    def open(self) -> bool:
        """Connected, as far as we can tell: its reader still reads."""
        reader = self._reader
        return self._ws is not None and not self._ws.closed and reader is not None and not reader.done()

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


class SupernodeLink:
    """Calls the supernode API; on a connection failure or 5xx tries the next URL. A task's
    calls go to the replica that owns it once one said so (421 NOT_OWNER). ``tls_args``:
    what every connection to a supernode passes with mutual TLS (``ClusterTls.to_supernode``:
    a server without a supernode certificate is refused in the handshake)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        urls: tuple[str, ...],
        peer_id: str,
        timeout: float,
        tls_args: dict[str, Any] | None = None,
    ) -> None:
        self._failover = Failover(urls)
        self._session = session
        self._tls_args = tls_args
        self._peer_id = peer_id
        self._timeout = timeout
        self._owners: dict[str, str] = {}  # task -> the replica that owns it
        self._channels: dict[str, _Channel] = {}

    async def register(self, reg: PeerRegistration) -> float:
        body = await self._call("register", reg.to_json())
        interval = body.get("heartbeat_interval") if isinstance(body, dict) else None
        return float(interval) if isinstance(interval, int | float) and interval > 0 else 5.0

    async def leave(self) -> None:
        await self._call("leave", {}, timeout=2.0)

    def connected(self) -> bool:
        """Whether a control channel is open: the supernode takes it as our heartbeat."""
        return any(c.open for c in self._channels.values())

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

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
                body = await self._call("open", batch.to_json(), timeout, owner)
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
            body = await self._call("report", part.to_json(), None, owner)
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

    async def ask(self, op: str, body: Any, timeout: float) -> Any:
        """A question off the report path (``manifest``, ``blob``): to the current supernode,
        then the others (one of them may hold the answer)."""
        return await self._call(op, body, timeout)

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

    async def _call(self, op: str, body: Any, timeout: float | None = None, owner: str | None = None) -> Any:
        """Call ``owner`` when given, else the current supernode, then the others."""

        async def attempt(url: str) -> Any:
            channel = self._channels.get(url)
            if channel is None:
                channel = self._channels[url] = _Channel(self._session, url, self._peer_id, self._tls_args)
            try:
                return await channel.call(op, body, timeout or self._timeout)
            except UNANSWERED:
                await channel.close()
                self._channels.pop(url, None)
                if owner == url:
                    self._owners = {t: o for t, o in self._owners.items() if o != url}  # a dead owner
                raise

        return await self._failover.call(attempt, owner)
