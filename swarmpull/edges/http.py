"""Small HTTP helpers shared by every daemon: listen addresses, JSON bodies and errors."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from swarmpull.core.fields import ProtocolError
from swarmpull.core.protocol import error_body
from swarmpull.edges.listener import HEADER_TIMEOUT, BoundedSite, ConnectionBudget, process_budget

MAX_JSON_BODY = 4 << 20
BODY_DEADLINE = 10.0  # seconds a request body may take to arrive whole (4 MiB at 3.2 Mbit/s)
# Every request one node sends to another carries this header: a registry proxy never
# mirrors a request that came from another node, so requests cannot loop.
PEER_HEADER = "X-Swarmpull-Peer"


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> HostPort:
        """``HOST:PORT``, ``[v6]:PORT`` or ``:PORT`` (all interfaces)."""
        host, sep, port_text = text.rpartition(":")
        if not sep or not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) <= 65535:
            raise ValueError(f"not a HOST:PORT address: {text!r}")
        host = host.strip("[]") or "0.0.0.0"
        return cls(host, int(port_text))

    @property
    def is_wildcard(self) -> bool:
        return self.host in ("0.0.0.0", "::")

    def url(self, scheme: str = "http") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def advertised_url(bound: HostPort, advertise: str | None, scheme: str = "http") -> str:
    """The URL others use to reach a server bound at ``bound``: ``advertise`` when given,
    else the bound address, else (bound to every interface) this host's name; ``scheme``
    is ``https`` for a server speaking TLS: ValueError for an ``advertise`` URL of
    another scheme, as others would knock at the wrong door."""
    if advertise:
        if "://" in advertise:
            if scheme == "https" and not advertise.startswith("https://"):
                raise ValueError(f"the advertised URL must be {scheme}://, not {advertise!r}")
            return advertise.rstrip("/")
        return HostPort.parse(advertise).url(scheme)
    if bound.is_wildcard:
        return HostPort(socket.getfqdn(), bound.port).url(scheme)
    return bound.url(scheme)


def tls_context(extra_ca: Path | None) -> ssl.SSLContext:
    """The system's CAs, plus ``extra_ca`` (PEM) when given: for upstream registries."""
    context = ssl.create_default_context()
    if extra_ca is not None:
        context.load_verify_locations(cafile=str(extra_ca))
    return context


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def json_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **details: Any
) -> web.Response:
    return web.json_response(error_body(code, message, **details), status=status, headers=headers)


async def read_body(request: web.BaseRequest, limit: int) -> bytes:
    """The request's whole body, however it is cut in segments; ProtocolError 413 when it
    is larger than ``limit``, 408 when it does not arrive within ``BODY_DEADLINE`` (a body
    dripped in holds a connection of the listener's budget)."""
    if request.content_length is not None and request.content_length > limit:
        raise ProtocolError(f"body larger than {limit} bytes", status=413)
    try:
        async with asyncio.timeout(BODY_DEADLINE):
            raw = await read_at_most(request.content, limit)
    except TimeoutError:
        raise ProtocolError(f"the body did not arrive within {BODY_DEADLINE:g} s", status=408) from None
    if len(raw) > limit:
        raise ProtocolError(f"body larger than {limit} bytes", status=413)
    return raw


async def read_json(request: web.Request, limit: int = MAX_JSON_BODY) -> Any:
    """The request's whole JSON body (``read_body``); ProtocolError if it is missing or
    not JSON."""
    raw = await read_body(request, limit)
    if not raw:
        raise ProtocolError("a JSON body is required")
    return parse_json(raw)


async def read_at_most(content: aiohttp.StreamReader, limit: int) -> bytes:
    """A body's bytes up to ``limit + 1`` (one more than allowed: the caller's sign that
    it is too long), however the stream cuts it: ``content.read(n)`` returns what is
    buffered, which over TLS is one record of 16 KiB, not the body."""
    data = bytearray()
    while len(data) <= limit:
        chunk = await content.read(limit + 1 - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def parse_json(raw: bytes) -> Any:
    """JSON from an untrusted peer: any malformed document is a ProtocolError, including
    ones that exhaust the parser (deep nesting) or Python's integer limits."""
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, integers over 4300 digits
        raise ProtocolError(f"body is not JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError("body is not JSON: nested too deeply") from None
    if _SURROGATE_ESCAPE.search(raw):  # "\ud800" alone is JSON, and no text: no str.encode() takes it
        try:
            json.dumps(value, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise ProtocolError("body is not JSON text: a lone surrogate (\\ud800-\\udfff)") from None
        except RecursionError:
            raise ProtocolError("body is not JSON: nested too deeply") from None
    return value


def error_message(body: Any, fallback: str) -> str:
    """The message of an error body built by ``error_body``, or ``fallback``."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        message = body["error"].get("message")
        if isinstance(message, str):
            return message
    return fallback


class BindError(OSError):
    """An address a server cannot listen on; ``where`` says which, so the command line can
    name the flag that gave it."""

    def __init__(self, where: HostPort, cause: OSError) -> None:
        reason = os.strerror(cause.errno).lower() if cause.errno else str(cause)
        super().__init__(cause.errno, f"cannot listen on {where}: {reason}")
        self.where = where


def bind(where: HostPort) -> tuple[socket.socket, HostPort]:
    """A listening socket at ``where`` (port 0: any free port), and the address it got:
    bound before the app is built, so the app can know its own URL. BindError if not."""
    family = socket.AF_INET6 if ":" in where.host else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise BindError(where, exc) from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((where.host, where.port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise BindError(where, exc) from exc
    return sock, HostPort(where.host, sock.getsockname()[1])


async def start_site(
    app: web.Application,
    where: HostPort | socket.socket,
    ssl_context: ssl.SSLContext | None = None,
    budget: ConnectionBudget | None = None,
    send_stall: float | None = None,
    **runner_args: Any,
) -> tuple[web.AppRunner, HostPort]:
    """Serve ``app`` at ``where`` (an address, port 0: any free port; or a socket from
    ``bind``), over TLS with ``ssl_context`` (``swarmpull.edges.tls.server_context``);
    returns the runner and the bound address (BindError if the address cannot be had).
    Connections are accepted within ``budget`` (default: the process's,
    ``swarmpull.edges.listener``) and must send a request's header within
    ``HEADER_TIMEOUT``. ``send_stall``: seconds a connection may leave what we sent
    unacknowledged before the kernel ends it (``listener.SEND_STALL``, for the sites
    that serve other nodes)."""
    runner_args.setdefault("shutdown_timeout", 2.0)  # in-flight requests get this long
    # aiohttp's keep-alive timer runs from each response and closes a connection still
    # waiting for a complete request: the header-read timeout between requests (the
    # budget keeps the one before the first).
    runner_args.setdefault("keepalive_timeout", HEADER_TIMEOUT)
    budget = budget or process_budget()
    app.middlewares.insert(0, budget.middleware())
    sock = bind(where)[0] if isinstance(where, HostPort) else where
    runner = web.AppRunner(app, access_log=None, **runner_args)
    await runner.setup()
    try:
        await BoundedSite(runner, sock, budget, ssl_context, send_stall).start()
    except OSError:
        await runner.cleanup()
        raise
    host = where.host if isinstance(where, HostPort) else sock.getsockname()[0]
    return runner, HostPort(host, sock.getsockname()[1])
