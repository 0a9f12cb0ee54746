"""Listening with bounds: every server of a daemon accepts through a ``BoundedSite``.

Each connection costs a file descriptor, and a process has a fixed number of them
(``RLIMIT_NOFILE``). A server that accepts whatever arrives runs out under a flood of idle
or slow-header ("slowloris") sockets, and then fails legitimate work: accepting, opening a
store file, connecting to a parent. So:

- The listeners of a process share one ``ConnectionBudget``: at most ``limit`` accepted
  connections at once (by default what the descriptor limit leaves after a reserve for
  files and outgoing connections, see ``budget_for``).
- A connection that arrives with the budget spent takes the place of an idle one: first
  one that never completed a request (oldest first: slow headers, or nothing at all),
  then a keep-alive connection between requests (idle longest first). Only connections
  idle for ``grace`` qualify, so a request that just arrived, or a response still being
  written, is never cut. A connection whose request is being handled is never closed for
  room. With nothing to shed, the listeners stop accepting: new connections wait in the
  kernel's backlog (a slow connect, never a reset) until a connection closes or an idle
  one ages into ``grace``.
- A connection must complete its first request's header within ``HEADER_TIMEOUT`` of
  opening: the budget closes connections that never did (``sweep``), whatever the
  aiohttp version. Between requests, aiohttp's keep-alive timer does the same, so
  ``start_site`` sets it to ``HEADER_TIMEOUT`` too; a TLS handshake gets as long.
- On a site started with ``send_stall`` (those that serve pieces to other nodes), a
  connection that stops reading what we send it is ended by the kernel once the bytes
  stay unacknowledged that long (``TCP_USER_TIMEOUT``), so an upload is never held open
  for ever by a reader with a closed window. Local clients (the registry proxy, the
  local API) may pause as they like.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import logging
import resource
import socket
import ssl
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

HEADER_TIMEOUT = 20.0
"""Seconds a connection may take to send a complete request header (and to stay idle
between requests): longer than the 15 s an aiohttp client keeps an idle connection, so
clients close idle connections first."""
GRACE = 1.0
"""Seconds a connection must have been idle before it is closed to make room."""
RESERVE = 256
"""File descriptors left (at least) for store files, outgoing connections and the rest."""
SEND_STALL = 30.0
"""Seconds bytes we sent may stay unacknowledged (the other side reads nothing: its
receive window closed) before the kernel ends the connection (``TCP_USER_TIMEOUT``), on
the sites that serve other nodes: a requester that stops reading holds no upload slot,
answer or buffer for ever."""
_BURST = 64  # connections accepted per wake-up of a listener, before others get the loop
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def budget_for(fd_limit: int) -> int:
    """Connections a process may accept with ``fd_limit`` descriptors: three quarters,
    and never more than all but ``RESERVE``."""
    return max(16, min(fd_limit * 3 // 4, fd_limit - RESERVE))


class ConnState(enum.Enum):
    FRESH = "fresh"  # no complete request yet
    BUSY = "busy"  # a request is being handled
    IDLE = "idle"  # between requests (keep-alive)


class _Conn:
    """One accepted connection, as the budget sees it."""

    __slots__ = ("busy", "close", "listener", "since", "state")

    def __init__(self, listener: _Acceptor, now: float, close: Callable[[], None]) -> None:
        self.listener = listener
        self.state = ConnState.FRESH
        self.since = now  # when it entered its state
        self.busy = 0  # requests under way (pipelined or not)
        self.close = close

    def __repr__(self) -> str:
        return f"<Conn {self.state.name} busy={self.busy}>"


class ConnectionBudget:
    """The connections of every listener of one process (per event loop); the one writer
    of their states. ``limit`` None: from the process's descriptor limit."""

    def __init__(
        self, limit: int | None = None, grace: float = GRACE, header_timeout: float = HEADER_TIMEOUT
    ) -> None:
        if limit is None:
            limit = budget_for(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        if limit < 1:
            raise ValueError("a connection budget is at least 1")
        self.limit = limit
        self.grace = grace
        self.shed = 0  # idle connections closed to make room, ever
        self._count = 0
        self._fresh: dict[_Conn, None] = {}  # in the order they opened
        self._idle: dict[_Conn, None] = {}  # in the order they went idle
        self._by_handler: dict[object, _Conn] = {}
        self._paused: set[_Acceptor] = set()
        self._wake: asyncio.TimerHandle | None = None
        self.header_timeout = header_timeout
        self.timed_out = 0  # connections closed for sending no complete header in time, ever
        self._sweeping: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<ConnectionBudget {self._count}/{self.limit} paused={len(self._paused)}>"

    @property
    def count(self) -> int:
        return self._count

    # ------------------------------------------------------------- accepting

    def make_room(self, now: float) -> bool:
        """Whether one more connection may be accepted, shedding an idle one if need be."""
        if self._count < self.limit:
            return True
        victim = self._oldest_idle(now)
        if victim is None:
            return False
        self.shed += 1
        if self.shed == 1 or self.shed % 1000 == 0:
            log.warning(
                "connection budget of %d spent: closing idle connections to make room (%d so far)",
                self.limit,
                self.shed,
            )
        self._forget(victim)  # counted out now: its close completes on a later turn
        victim.close()
        return True

    def _oldest_idle(self, now: float) -> _Conn | None:
        for pool in (self._fresh, self._idle):
            for conn in pool:  # the oldest first: if it is too young, so are the others
                if now - conn.since >= self.grace:
                    return conn
                break
        return None

    def pause(self, listener: _Acceptor, loop: asyncio.AbstractEventLoop) -> None:
        """``listener`` found no room: it stops accepting until there is some."""
        self._paused.add(listener)
        listener.stop_reading()
        if self._wake is None:  # an idle connection may age into the grace meanwhile
            self._wake = loop.call_later(self.grace / 2, self._resume)

    def _resume(self) -> None:
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
        paused, self._paused = self._paused, set()
        for listener in paused:
            listener.start_reading()

    # ------------------------------------------------------------ header timeout

    def sweep(self, now: float) -> int:
        """Close the connections that opened ``header_timeout`` ago or more and never
        completed a request (slow-header or silent ones); how many."""
        late = []
        for conn in self._fresh:  # in the order they opened: the first young one ends it
            if now - conn.since < self.header_timeout:
                break
            late.append(conn)
        for conn in late:
            self._forget(conn)
            conn.close()
        self.timed_out += len(late)
        if late and self._paused:
            self._resume()
        return len(late)

    def keep_sweeping(self, loop: asyncio.AbstractEventLoop) -> None:
        """Sweep a few times per ``header_timeout`` while connections are fresh."""
        if self._sweeping is None:
            self._sweeping = loop.call_later(self.header_timeout / 4, self._sweep_tick, loop)

    def _sweep_tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeping = None
        self.sweep(loop.time())
        if self._fresh:
            self.keep_sweeping(loop)

    # ------------------------------------------------------------ connections

    def opened(self, listener: _Acceptor, now: float, close: Callable[[], None]) -> _Conn:
        conn = _Conn(listener, now, close)
        self._count += 1
        self._fresh[conn] = None
        return conn

    def attach(self, conn: _Conn, handler: object) -> None:
        """The connection's aiohttp protocol is ``handler`` (a request's ``protocol``)."""
        if conn.listener is not None:  # not shed in the meantime
            self._by_handler[handler] = conn

    def closed(self, conn: _Conn, handler: object) -> None:
        self._by_handler.pop(handler, None)
        if self._forget(conn) and self._paused:
            self._resume()

    def _forget(self, conn: _Conn) -> bool:
        """Count ``conn`` out; False if it already was."""
        if conn.listener is None:
            return False
        conn.listener = None  # type: ignore[assignment]
        self._fresh.pop(conn, None)
        self._idle.pop(conn, None)
        self._count -= 1
        return True

    def begin(self, handler: object, now: float) -> _Conn | None:
        """A request on ``handler``'s connection is being handled."""
        conn = self._by_handler.get(handler)
        if conn is None:
            return None
        self._fresh.pop(conn, None)
        self._idle.pop(conn, None)
        conn.busy += 1
        conn.state, conn.since = ConnState.BUSY, now
        return conn

    def end(self, conn: _Conn, now: float) -> None:
        conn.busy -= 1
        if conn.busy == 0 and conn.listener is not None:
            conn.state, conn.since = ConnState.IDLE, now
            self._idle[conn] = None

    def middleware(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        """Marks connections busy while their requests are handled (an aiohttp middleware)."""
        loop_time = asyncio.get_running_loop().time

        @web.middleware
        async def mark_busy(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            conn = self.begin(request.protocol, loop_time())
            try:
                return await handler(request)
            finally:
                if conn is not None:
                    self.end(conn, loop_time())

        return mark_busy


_budgets: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ConnectionBudget] = weakref.WeakKeyDictionary()


def process_budget() -> ConnectionBudget:
    """The budget every listener on this event loop shares: descriptors belong to the
    process, whatever number of daemons it runs."""
    loop = asyncio.get_running_loop()
    budget = _budgets.get(loop)
    if budget is None:
        budget = _budgets[loop] = ConnectionBudget()
    return budget


def parked_cap() -> int:
    """Requests parked waiting for news (long polls) a process holds at most: half its
    connection budget, which sheds only idle connections, so the rest keeps room."""
    return max(1, process_budget().limit // 2)


class Parked:
    """Requests parked waiting for news (long polls), counted per caller: at most
    ``per_caller`` one, ``parked_cap()`` together (each holds a connection the budget does
    not shed: one caller's polls took a process's whole budget). ``full`` before parking
    one, ``parked`` around its wait."""

    def __init__(self, per_caller: int) -> None:
        self._per_caller = per_caller
        self._waiting: Counter[str | None] = Counter()  # caller -> its requests parked

    def __len__(self) -> int:
        return self._waiting.total()

    def full(self, caller: str | None) -> bool:
        """Whether one more of ``caller``'s (None: no name, counted in all only) would be
        past a cap."""
        if self._waiting.total() >= parked_cap():
            return True
        return caller is not None and self._waiting[caller] >= self._per_caller

    @contextlib.contextmanager
    def parked(self, caller: str | None) -> Iterator[None]:
        self._waiting[caller] += 1
        try:
            yield
        finally:
            self._waiting[caller] -= 1
            if not self._waiting[caller]:
                del self._waiting[caller]


class _Tracked(asyncio.Protocol):
    """aiohttp's protocol for one connection, with the budget told when it opens and ends."""

    __slots__ = ("_budget", "_conn", "_inner")

    def __init__(self, budget: ConnectionBudget, conn: _Conn, inner: asyncio.Protocol) -> None:
        self._budget = budget
        self._conn = conn
        self._inner = inner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._conn.close = transport.close
        self._budget.attach(self._conn, self._inner)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._budget.closed(self._conn, self._inner)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class _Acceptor:
    """Accepts on one listening socket within the budget (what asyncio's ``Server`` is to
    ``create_server``: ``sockets`` and ``close()`` are what aiohttp's runner uses)."""

    def __init__(
        self,
        sock: socket.socket,
        factory: Callable[[], asyncio.Protocol],
        budget: ConnectionBudget,
        ssl_context: ssl.SSLContext | None,
        send_stall: float | None = None,
    ) -> None:
        self._sock: socket.socket | None = sock
        self._send_stall = send_stall
        self._factory = factory
        self._budget = budget
        self._ssl = ssl_context
        self._loop = asyncio.get_running_loop()
        self._reading = False
        self._handshakes: set[asyncio.Task[Any]] = set()

    @property
    def sockets(self) -> list[socket.socket]:
        return [self._sock] if self._sock is not None else []

    def start_reading(self) -> None:
        if self._sock is not None and not self._reading:
            self._loop.add_reader(self._sock.fileno(), self._accept)
            self._reading = True

    def stop_reading(self) -> None:
        if self._sock is not None and self._reading:
            self._loop.remove_reader(self._sock.fileno())
            self._reading = False

    def close(self) -> None:
        self.stop_reading()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for task in self._handshakes:
            task.cancel()

    def _accept(self) -> None:
        for _ in range(_BURST):
            if self._sock is None:
                return
            if not self._budget.make_room(self._loop.time()):
                self._budget.pause(self, self._loop)
                return
            try:
                sock, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_FDS:  # something else took the descriptors: wait a bit
                    log.warning("accepting: %s; pausing for a second", exc.strerror)
                    self.stop_reading()
                    self._loop.call_later(1.0, self.start_reading)
                    return
                continue  # ECONNABORTED and the like: that one connection is gone
            self._serve(sock)

    def _serve(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._send_stall is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(self._send_stall * 1000))
        conn = self._budget.opened(self, self._loop.time(), sock.close)
        self._budget.keep_sweeping(self._loop)
        protocol = _Tracked(self._budget, conn, self._factory())
        if self._ssl is None:
            # uvloop makes the transport at once; connection_made comes on the next turn.
            task = asyncio.ensure_future(self._loop.connect_accepted_socket(lambda: protocol, sock))
        else:
            task = asyncio.ensure_future(
                self._loop.connect_accepted_socket(
                    lambda: protocol, sock, ssl=self._ssl, ssl_handshake_timeout=HEADER_TIMEOUT
                )
            )
        self._handshakes.add(task)
        conn.close = task.cancel
        task.add_done_callback(lambda done: self._connected(done, sock, conn))

    def _connected(self, task: asyncio.Task[Any], sock: socket.socket, conn: _Conn) -> None:
        self._handshakes.discard(task)
        if task.cancelled() or task.exception() is not None:
            # The handshake failed or timed out, or the connection was shed before it
            # was served: nothing else will close it.
            with contextlib.suppress(OSError):
                sock.close()
            self._budget.closed(conn, None)


class BoundedSite(web.BaseSite):
    """An aiohttp site on a listening socket (``swarmpull.edges.http.bind``) that accepts
    within a ``ConnectionBudget``."""

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: socket.socket,
        budget: ConnectionBudget,
        ssl_context: ssl.SSLContext | None = None,
        send_stall: float | None = None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._sock = sock
        self._budget = budget
        self._send_stall = send_stall
        host, port = sock.getsockname()[:2]
        self._name = f"{'https' if ssl_context else 'http'}://{host}:{port}"

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        if server is None:  # aiohttp's runner makes its server in setup()
            raise RuntimeError("the listener starts only after its runner is set up")
        acceptor = _Acceptor(self._sock, server, self._budget, self._ssl_context, self._send_stall)
        self._server = acceptor  # type: ignore[assignment]
        acceptor.start_reading()
