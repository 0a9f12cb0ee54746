"""Every operation of the supernode's and the peer's OpenAPI documents, fuzzed with
schemathesis against real daemons on loopback: no 5xx, no crash, answers as documented
(status, content type, headers, body schema; invalid requests refused), and real pulls
through the fuzzed daemons afterwards.

Each operation gets ``SWARMPULL_FUZZ_EXAMPLES`` examples (default below; set it higher to
fuzz longer) in three passes: valid requests, invalid ones, and valid ones aimed at what
the daemons know (``Known``: a registered peer, a task held everywhere, its blob
upstream), so the fuzzing gets past "unknown peer" into the scheduler and the stores.
The examples are the same every run (``SWARMPULL_FUZZ_SEED`` picks others).

The supernode's control channel gets the same bodies as calls (``Channel``: every body
sent to register, open or report is sent on an open channel too), then frames of every
wrong shape and any JSON at all: each must be answered as the document's ChannelAnswer
says (an error for an invalid call, never INTERNAL) on a channel that stays open. Then
the frames that close a channel, and calls cut off by their channel going.

Nothing leaves loopback (``Confine``, applied to every request): an upstream URL a daemon
would accept is pointed at this test's upstream, a peer address it would accept at a
port where nobody listens, and long polls are cut short. The fuzzing runs in a thread;
the daemons keep serving on the test's event loop. What it found is kept as focused
tests (tests/unit/test_hostile_input.py, tests/integration/test_api.py).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import socket
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import jsonschema_rs
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core import NOT_SET
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from swarmpull.core.fields import ProtocolError, parse_address
from swarmpull.core.tasks import check_upstream_url
from swarmpull.edges.http import MAX_JSON_BODY, HostPort

EXAMPLES = int(os.environ.get("SWARMPULL_FUZZ_EXAMPLES", "8"))
SEED = int(os.environ.get("SWARMPULL_FUZZ_SEED", "0"))  # the same examples every run, unless changed
PIECE = 16 * 1024
KNOWN_BLOB = os.urandom(3 * PIECE)
PULLED_BLOB = os.urandom(20 * PIECE + 5)
# Registering and opening first (the aimed pass joins the fuzzing peer to the task), and
# leaving last (the aimed pass makes it leave).
ORDER = {"POST /api/v1/peers": 0, "POST /api/v1/tasks": 1, "DELETE /api/v1/peers/{peer}": 9}


def no_server_error(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> bool | None:
    """No 5xx, but the peer's 502 UPSTREAM_ERROR: the blob cannot be had (upstream said no)."""
    status = response.status_code
    if status >= 500:
        upstream_error = status == 502 and case.operation.path in ("/api/v1/fetch", "/api/v1/file")
        assert upstream_error and b"UPSTREAM_ERROR" in (response.content or b""), (
            f"{status}: {response.text[:500]}"
        )
    return None


CHECKS = [
    no_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


class Confine:
    """Rewrites what a request would make a daemon reach beyond this test's own servers."""

    def __init__(self, upstream: str, dead: str) -> None:
        self._upstream = urlsplit(upstream).netloc
        self._dead = dead

    def __call__(self, case: schemathesis.Case) -> None:
        if case.query and "wait" in case.query:
            case.query["wait"] = _at_most(case.query["wait"], 0.2)
        body = case.body
        if not isinstance(body, dict):
            return
        for item in [body, *(t for t in _items(body, "tasks"))]:
            if "url" in item:
                item["url"] = self._url(item["url"])
        if "address" in body:
            body["address"] = self._address(body["address"])

    def _url(self, url: Any) -> Any:
        """A URL the daemon would read (the same check as its own) goes to our upstream."""
        if not isinstance(url, str):
            return url
        try:
            parts = urlsplit(check_upstream_url(url))
        except ValueError:
            return url  # refused before anything is read
        return urlunsplit(("http", self._upstream, parts.path, parts.query, ""))

    def _address(self, address: Any) -> Any:
        try:
            return self._dead if parse_address(address) else address
        except ProtocolError:
            return address  # refused


@dataclass(frozen=True, slots=True)
class Known:
    """What the aimed pass points requests at."""

    peer_id: str  # the fuzzing peer: registered, a member of the task
    others: tuple[str, ...]  # ids it may name as parents: the real peers, the seed
    blob_url: str
    digest: str
    size: int

    @property
    def task_id(self) -> str:
        return "sha256-" + self.digest.removeprefix("sha256:")

    @property
    def pieces(self) -> int:
        return -(-self.size // PIECE)

    def aim(self, case: schemathesis.Case) -> None:
        for name, value in list((case.path_parameters or {}).items()):
            case.path_parameters[name] = self._path(name, value)
        if case.query and isinstance(case.query.get("known"), str):
            case.query["known"] = self._fit(case.query["known"])
        body = case.body
        if not isinstance(body, dict):
            return
        self._fields(body)
        for item in _items(body, "tasks"):
            self._fields(item)
            for parent in _items(item, "parents"):
                parent["id"] = self._other(parent.get("id"))
            for key in ("drop", "bad"):
                if isinstance(item.get(key), list):
                    item[key] = [self._other(p) for p in item[key]]
        for holding in _items(body, "holdings"):
            holding.update(task_id=self.task_id, size=self.size, piece_size=PIECE)
            self._fields(holding)

    def _path(self, name: str, value: Any) -> Any:
        if name in ("task", "task_id"):
            return self.task_id
        if name == "peer":
            return self.peer_id
        if name == "piece" and isinstance(value, str) and value.isdigit():
            return str(int(value) % self.pieces)
        return value

    def _fields(self, item: dict[str, Any]) -> None:
        if "peer_id" in item:
            item["peer_id"] = self.peer_id
        if "task_id" in item:
            item["task_id"] = self.task_id
        if "url" in item:
            item["url"] = self.blob_url
        if isinstance(item.get("digest"), str):
            item["digest"] = self.digest
        if isinstance(item.get("have"), str):
            item["have"] = self._fit(item["have"])

    def _other(self, peer_id: Any) -> Any:
        if not isinstance(peer_id, str):
            return peer_id
        return self.others[zlib.crc32(peer_id.encode()) % len(self.others)]

    def _fit(self, bitfield: str) -> str:
        """The generated bitfield cut to the task's length (its bits kept, as far as they go)."""
        try:
            data = base64.b64decode(bitfield, validate=True)
        except (binascii.Error, ValueError):
            return bitfield
        width = (self.pieces + 7) // 8
        value = int.from_bytes(data[:width].ljust(width, b"\0"), "little") & ((1 << self.pieces) - 1)
        return base64.b64encode(value.to_bytes(width, "little")).decode()

    def may_cut(self, case: schemathesis.Case) -> bool:
        """A fetch of a blob under a digest it does not have: the peer finds out only at
        its end, and cuts the answer short of its last byte."""
        body = case.body if isinstance(case.body, dict) else {}
        asked = body.get("digest")
        return case.operation.path == "/api/v1/fetch" and asked is not None and asked != self.digest


def _items(body: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = body.get(key)
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _at_most(value: Any, most: float) -> Any:
    if isinstance(value, list):
        return [_at_most(v, most) for v in value]
    try:
        return most if float(value) > most else value
    except (TypeError, ValueError):
        return value


def fuzz(
    doc: dict[str, Any],
    base_urls: Callable[[str], list[str]],
    confine: Confine,
    known: Known,
    channel: Channel | None = None,
) -> tuple[list[str], int]:
    """Every operation, in three passes each; the failures (none: empty) and requests sent.
    With a ``channel``, the bodies of the operations it also has are sent on it too."""
    schema = schemathesis.openapi.from_dict(doc)
    operations = sorted(
        (result.ok() for result in schema.get_all_operations()), key=lambda op: ORDER.get(op.label, 5)
    )
    failures: list[str] = []
    sent = [0]
    with requests.Session() as session:
        session.trust_env = False  # no proxy from the environment: loopback only
        for operation in operations:
            passes: list[tuple[GenerationMode, Known | None]] = [(GenerationMode.POSITIVE, None)]
            if operation.path_parameters or operation.query or operation.body or operation.headers:
                passes += [(GenerationMode.NEGATIVE, None), (GenerationMode.POSITIVE, known)]
            for base in base_urls(operation.path):
                for mode, aim in passes:

                    def prepare(case: schemathesis.Case, aim: Known | None = aim) -> None:
                        if aim is not None:
                            aim.aim(case)
                        confine(case)  # last: whatever was aimed, nothing leaves loopback

                    try:
                        fuzz_pass(operation, mode, base, session, prepare, known.may_cut, sent, channel)
                    except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup
                        where = f"{operation.label} at {base} ({mode.value}{', aimed' if aim else ''})"
                        failures.append(f"{where}:\n{exc}")
    return failures, sent[0]


def fuzz_pass(
    operation: Any,
    mode: GenerationMode,
    base: str,
    session: requests.Session,
    prepare: Callable[[schemathesis.Case], None],
    may_cut: Callable[[schemathesis.Case], bool],
    sent: list[int],
    channel: Channel | None,
) -> None:
    """``EXAMPLES`` requests to one operation; raises the first failure."""

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @seed(SEED)
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        prepare(case)
        sent[0] += 1
        try:
            response = case.call(base_url=base, session=session, timeout=20)
        except requests.exceptions.ChunkedEncodingError:
            if may_cut(case):
                return
            raise
        case.validate_response(response, checks=CHECKS)
        op = CHANNEL_OPS.get(operation.label)
        if channel is not None and op is not None and not isinstance(case.body, bytes):  # not JSON
            channel.check_call(op, None if case.body is NOT_SET else case.body)

    run()


# ------------------------------------------------------------------ the control channel

# The channel's calls and the REST operations whose bodies they take.
CHANNEL_OPS = {
    "POST /api/v1/peers": "register",
    "POST /api/v1/tasks": "open",
    "POST /api/v1/peers/{peer}/report": "report",
}
BODIES = {"register": "PeerRegistration", "open": "OpenTasks", "report": "PeerReport"}
ANSWERS = {"register": "Registered", "open": "Opened", "report": "Reported"}
# Frames no client should send: each is answered with an error, and the channel lives on.
HOSTILE_FRAMES = [
    "",
    "{",
    "null",
    "[]",
    '"call"',
    "1" * 5000,  # more digits than Python parses
    "[" * 100_000,  # nested deeper than the parser recurses
    '{"op": "leave"}',
    '{"id": true, "op": "report"}',
    '{"id": 1.5, "op": "report"}',
    '{"id": "7", "op": "report"}',
    '{"id": 1, "op": "fly"}',
    '{"id": 2, "op": null}',
    '{"id": 3, "op": ["report"]}',
    '{"id": 4, "op": "open"}',
    '{"id": 5, "op": "register", "body": []}',
    '{"id": 6, "op": "report", "body": 7}',
    '{"id": 7, "op": "report", "body": {"tasks": [{"task_id": "sha256-' + "0" * 64 + '\\n"}]}}',
    '{"id": ' + "9" * 40 + ', "op": "report", "body": {"dropped_tasks": false}}',
]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
# Any JSON message, and calls of the right frame with any body.
MESSAGES = JSON | st.fixed_dictionaries(
    {"id": st.integers(), "op": st.sampled_from([*BODIES, "leave"]) | st.text(max_size=8)},
    optional={"body": JSON},
)


class Channel:
    """A control channel to the supernode, driven from the fuzzing's thread (its
    WebSocket lives on the test's event loop): every answer is checked as it arrives."""

    def __init__(
        self, ws: aiohttp.ClientWebSocketResponse, loop: asyncio.AbstractEventLoop, doc: dict
    ) -> None:
        self._ws = ws
        self._loop = loop
        self._ids = iter(range(1, 1 << 30))
        root = {"components": doc["components"]}
        self._schemas = {
            name: jsonschema_rs.validator_for({"$ref": f"#/components/schemas/{name}", **root})
            for name in ("ChannelCall", "ChannelAnswer", *BODIES.values(), *ANSWERS.values())
        }
        self.sent = 0

    def _exchange(self, text: str, timeout: float = 20) -> dict[str, Any]:
        async def exchange() -> dict[str, Any]:
            await self._ws.send_str(text)
            msg = await self._ws.receive(timeout=timeout)
            assert msg.type is aiohttp.WSMsgType.TEXT, f"the channel closed on {text[:200]!r}: {msg}"
            return json.loads(msg.data)

        self.sent += 1
        return asyncio.run_coroutine_threadsafe(exchange(), self._loop).result()

    def _conforms(self, name: str, value: Any) -> None:
        errors = [str(e) for e in self._schemas[name].iter_errors(value)]
        assert not errors, f"not a {name}: {json.dumps(value)[:500]}\n" + "\n".join(errors[:3])

    def check_call(self, op: str, body: Any) -> None:
        """``body`` as an ``op`` call: answered as documented; refused when it is not a
        valid call (whether the body was generated valid or not)."""
        message: dict[str, Any] = {"id": next(self._ids), "op": op}
        if body is not None:
            message["body"] = body
        self.check(json.dumps(message), message)

    def check(self, text: str, message: Any, *, invalid: bool | None = None) -> None:
        """``text`` (``message`` parsed, None if not JSON) answered as documented; with an
        error when it is ``invalid`` (by default: when it is not a ChannelCall)."""
        if invalid is None:
            invalid = not self._schemas["ChannelCall"].is_valid(message)
        answer = self._exchange(text)
        self._conforms("ChannelAnswer", answer)
        ident = message.get("id") if isinstance(message, dict) else None
        assert answer["id"] == (ident if type(ident) is int else None), (text[:200], answer)
        if "error" in answer:
            assert answer["error"]["code"] != "INTERNAL", (text[:500], answer)
        else:
            assert not invalid, f"an invalid call was served: {text[:500]} -> {answer}"
            op = message.get("op")
            if op in ANSWERS:
                self._conforms(ANSWERS[op], answer["body"])
        if invalid:
            assert answer.get("error", {}).get("code") in ("BAD_REQUEST", "TOO_LARGE"), (text[:500], answer)

    def check_hostile(self) -> None:
        """Frames of every wrong shape, then any JSON at all: each answered, none fatal."""
        for text in HOSTILE_FRAMES:
            self.check(text, _json_or_none(text), invalid=True)

        @settings(max_examples=EXAMPLES * 8, deadline=None, database=None)
        @seed(SEED)
        @given(message=MESSAGES)
        def run(message: Any) -> None:
            self.check(json.dumps(message), message)

        run()


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


async def open_channel(session: aiohttp.ClientSession, url: str, peer_id: str):
    return await session.ws_connect(f"{url}/api/v1/peers/{peer_id}/channel", max_msg_size=0, heartbeat=None)


async def assert_frames_that_close_the_channel(url: str, peer_id: str) -> None:
    """A binary frame, and a frame larger than a JSON body may be: the channel closes,
    with the documented code (the large frame's, unless the close cut the frame short:
    then the connection is simply gone), and nothing else does."""
    for frame, code in ((b"\x00{}", 1003), ("[" + " " * MAX_JSON_BODY + "]", 1009)):
        async with aiohttp.ClientSession() as session, await open_channel(session, url, peer_id) as ws:
            try:
                await (ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_str(frame))
            except ConnectionError:
                assert code == 1009
                continue
            msg = await ws.receive(timeout=20)
            assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == code, msg


async def assert_calls_cut_off_are_harmless(url: str, known: Known, upstream) -> None:
    """Calls under way when their channel goes (an open waiting for a new blob's upstream,
    a report, a registration): no answer can be sent, and nothing is logged as failed."""
    for n in range(5):
        blob_url = upstream.add(f"cut-{n}", os.urandom(PIECE))
        calls = [
            {"op": "open", "body": {"peer_id": known.peer_id, "tasks": [{"url": blob_url}]}},
            {"op": "report", "body": {"tasks": [{"task_id": known.task_id}]}},
            {"op": "register", "body": {"peer_id": known.peer_id}},
        ]
        session = aiohttp.ClientSession()
        ws = await open_channel(session, url, known.peer_id)
        for ident, call in enumerate(calls):
            await ws.send_str(json.dumps({"id": ident, **call}))
        await session.close()  # the connection goes at once, no close handshake


# ---------------------------------------------------------------------- the test bed


@pytest.fixture
def dead_address():
    """A loopback port bound but not listening: connections are refused, nobody else gets it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.fixture
def no_errors_logged(caplog):
    """A crash shows as an error in the log: a handler's traceback, a task that died."""
    caplog.set_level(logging.WARNING)
    yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, "\n".join(f"{r.name}: {r.getMessage()}\n{r.exc_text or ''}" for r in errors)


async def call(method: str, url: str, **kwargs: Any) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.request(method, url, **kwargs) as resp:
        return resp.status, await resp.read()


async def doc_of(url: str) -> dict[str, Any]:
    status, raw = await call("GET", f"{url}/api/v1/openapi.json")
    assert status == 200
    return json.loads(raw)


async def fetch(api_url: str, url: str, digest: str) -> tuple[int, bytes]:
    return await call("POST", f"{api_url}/api/v1/fetch", json={"url": url, "digest": digest})


async def a_swarm(swarm, upstream, dead: str, peers: int = 1):
    """A supernode, peers with a local API, a blob they hold, and the fuzzing peer
    registered (at the dead address) as a member of that blob's task."""
    supernode = await swarm.start_supernode(piece_size=PIECE)
    nodes = await swarm.add_peers(peers, api_listen=HostPort("127.0.0.1", 0))
    url, digest = upstream.add("known", KNOWN_BLOB), upstream.digest_of(KNOWN_BLOB)
    for node in nodes:
        assert await fetch(node.api_url, url, digest) == (200, KNOWN_BLOB)
    known = Known("fuzzer", (*(n.peer_id for n in nodes), "seed"), url, digest, len(KNOWN_BLOB))
    api = f"{supernode.url}/api/v1"
    assert (await call("POST", f"{api}/peers", json={"peer_id": known.peer_id, "address": dead}))[0] == 200
    opened = {"peer_id": known.peer_id, "tasks": [{"url": url, "digest": digest}]}
    assert (await call("POST", f"{api}/tasks", json=opened))[0] == 200
    return supernode, nodes, known


async def assert_real_pulls(swarm, nodes, upstream) -> None:
    """A new blob, then the fuzzed one by a newcomer (whose parents may include the
    fuzzing peer, at its dead address): each whole and verified."""
    url = upstream.add("pulled", PULLED_BLOB)
    for node in nodes:
        assert await fetch(node.api_url, url, upstream.digest_of(PULLED_BLOB)) == (200, PULLED_BLOB)
    (newcomer,) = await swarm.add_peers(1, api_listen=HostPort("127.0.0.1", 0))
    for blob, path in ((KNOWN_BLOB, "known"), (PULLED_BLOB, "pulled")):
        assert await fetch(newcomer.api_url, upstream.url_of(path), upstream.digest_of(blob)) == (200, blob)


async def test_the_supernode_survives_fuzzing(swarm, upstream, dead_address, no_errors_logged):
    supernode, nodes, known = await a_swarm(swarm, upstream, dead_address, peers=2)
    doc = await doc_of(supernode.url)
    started = time.monotonic()
    confine = Confine(upstream.url, dead_address)
    async with (
        aiohttp.ClientSession() as session,
        await open_channel(session, supernode.url, known.peer_id) as ws,
    ):
        channel = Channel(ws, asyncio.get_running_loop(), doc)
        failures, sent = await asyncio.to_thread(
            fuzz, doc, lambda _: [supernode.url], confine, known, channel
        )
        assert not failures, "\n\n".join(failures)
        await asyncio.to_thread(channel.check_hostile)
        assert not ws.closed
    print(f"supernode: {sent} requests, {channel.sent} calls in {time.monotonic() - started:.1f} s")
    await assert_frames_that_close_the_channel(supernode.url, known.peer_id)
    await assert_calls_cut_off_are_harmless(supernode.url, known, upstream)
    await assert_real_pulls(swarm, nodes, upstream)


async def test_the_peer_survives_fuzzing(swarm, upstream, dead_address, no_errors_logged):
    _, (peer,), known = await a_swarm(swarm, upstream, dead_address)
    doc = await doc_of(peer.api_url)

    def base_urls(path: str) -> list[str]:
        """The piece server's routes are at the peer's address, the rest at its local API."""
        servers = [s["url"] for s in doc["paths"][path].get("servers", [{"url": "/"}])]
        return [peer.api_url if s == "/" else peer.address for s in servers]

    started = time.monotonic()
    failures, sent = await asyncio.to_thread(fuzz, doc, base_urls, Confine(upstream.url, dead_address), known)
    print(f"peer: {sent} requests in {time.monotonic() - started:.1f} s")
    assert not failures, "\n\n".join(failures)
    await assert_real_pulls(swarm, [peer], upstream)
