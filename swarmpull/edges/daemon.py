"""Running a daemon in the foreground: uvloop, signals, a clean stop, the most open
files the system allows, and no false alarms from uvloop's TLS."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import uvloop

log = logging.getLogger(__name__)


class Daemon(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


def run_daemon(factory: Callable[[], Daemon], on_started: Callable[[Daemon], None] | None = None) -> None:
    """Build, start and serve a daemon on uvloop until SIGINT or SIGTERM, then stop it."""
    soft, limit = raise_fd_limit()

    def started(daemon: Daemon) -> None:
        # Said once serving, not before: a daemon that cannot start says only why.
        log.info("open files: at most %d (soft limit was %d)", limit, soft)
        if on_started is not None:
            on_started(daemon)

    uvloop.run(_serve(factory, started))


def raise_fd_limit() -> tuple[int, int]:
    """Lift the soft limit on open files to the hard one: every connection and every blob
    held costs a descriptor, and the usual soft limit (1024) is far below what a node
    under load needs. Returns the soft limit before and after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20  # the kernel's nr_open default
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, target
    return soft, soft


def quiet_closed_tls(loop: asyncio.AbstractEventLoop) -> None:
    """uvloop logs a TLS connection whose socket is already closed as a "Fatal error on
    SSL protocol" with a traceback (its SSLProtocol writes to the closed socket:
    MagicStack/uvloop#506, open). A node closes such connections all the time (a cancelled
    transfer, an idle parent let go), so that one case goes to the debug log; any other
    error to the loop's default handler."""

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        closed = isinstance(exc, RuntimeError) and str(exc).endswith("the handler is closed")
        if closed and "SSL" in str(context.get("message", "")):
            log.debug("a TLS connection closed under uvloop's SSL protocol: %s", exc)
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


async def _serve(factory: Callable[[], Daemon], on_started: Callable[[Daemon], None] | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    quiet_closed_tls(loop)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    daemon = factory()
    try:
        await daemon.start()
        if on_started is not None:
            on_started(daemon)
        await stop.wait()
        log.info("stopping")
    finally:
        with contextlib.suppress(Exception):
            await daemon.stop()


async def gather_cancel(*tasks: asyncio.Task[object] | None) -> None:
    """Cancel tasks and wait for them to end."""
    live = [t for t in tasks if t is not None]
    for task in live:
        task.cancel()
    await asyncio.gather(*live, return_exceptions=True)


def run_coroutine(main: Callable[[], Awaitable[int]]) -> int:
    """Run a one-shot command on uvloop; returns its exit status."""

    async def quietly() -> int:
        quiet_closed_tls(asyncio.get_running_loop())
        return await main()

    return uvloop.run(quietly())


class DaemonGroup:
    """Daemons started in order and stopped in reverse (a daemon after its events log)."""

    def __init__(self, *daemons: Daemon) -> None:
        self.daemons = daemons
        self._started: list[Daemon] = []

    async def start(self) -> None:
        try:
            for daemon in self.daemons:
                await daemon.start()
                self._started.append(daemon)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        while self._started:
            with contextlib.suppress(Exception):
                await self._started.pop().stop()
