"""Sending a region of a file as an aiohttp response's body with ``os.sendfile``: the
kernel moves the page cache to the socket, no copy through Python. uvloop has no
``loop.sendfile`` (aiohttp's FileResponse falls back to reading and writing there), so
the body goes out on a duplicate of the connection's socket, waiting for room with
``add_writer``. Each call is capped by what the upload limiter granted."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from aiohttp import web

from swarmpull.edges.ratelimit import RateLimiter

GRANT = 256 * 1024  # bytes asked of a set limiter at a time


def can_sendfile(request: web.Request) -> bool:
    """Whether the connection is a plain socket (not TLS, not a test transport)."""
    transport = request.transport
    if transport is None or transport.get_extra_info("sslcontext") is not None:
        return False
    return transport.get_extra_info("socket") is not None


async def send_region(
    request: web.Request,
    resp: web.StreamResponse,
    fd: int,
    offset: int,
    length: int,
    limiter: RateLimiter,
    on_sent: Callable[[int], None],
) -> None:
    """Prepare ``resp`` (its Content-Length set) and send ``length`` bytes of ``fd`` from
    ``offset`` as its body. Raises ConnectionResetError if the requester goes.

    The first grant is waited for before the head goes out, so that the body follows its
    head at once (the piece server's other path does the same): a requester can then tell
    a source that answers and sends nothing (a lie, or a frozen node) from one waiting
    for its upload link."""
    ready = 0  # bytes granted ahead of the head
    if limiter.rate is not None and length:
        ready = min(GRANT, length)
        await limiter.acquire(ready)
    writer = await resp.prepare(request)
    transport = request.transport
    if writer is None or transport is None:
        raise ConnectionResetError("the requester hung up")
    writer.send_headers()  # aiohttp holds them for the first body write otherwise
    await writer.drain()
    loop = asyncio.get_running_loop()
    while transport.get_write_buffer_size():  # the head must be out before the body
        await asyncio.sleep(0.001)
    out = os.dup(transport.get_extra_info("socket").fileno())
    try:
        sent = 0
        while sent < length:
            grant = length - sent
            if ready:
                grant, ready = ready, 0
            elif limiter.rate is not None:
                grant = min(GRANT, grant)
                await limiter.acquire(grant)
            end = sent + grant
            while sent < end:
                try:
                    count = os.sendfile(out, fd, offset + sent, end - sent)
                except BlockingIOError:
                    await _writable(loop, out)
                    continue
                if count == 0:
                    raise ConnectionResetError("the file ended early")
                sent += count
                on_sent(count)
    finally:
        os.close(out)
    writer.output_size += length  # aiohttp's own accounting, as if it had written them
    await resp.write_eof()


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    ready = loop.create_future()
    loop.add_writer(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_writer(fd)
