"""Test kit: a TCP relay in front of an honest node that makes it a hostile source, at the
byte level: ``slow`` sends what the node answers at ``rate`` bytes per second; ``truncate``
passes ``keep`` bytes of a connection's answers, then hangs up. Requests pass as they
are, and so do the answers on a connection that opens with a piece-map request (so the
others believe the node holds what it holds). ``redirect`` answers every request, maps
too, with a 307 to ``location``. ``honest`` passes everything."""

from __future__ import annotations

import asyncio
import contextlib
import re

_REQUEST_LINE = re.compile(rb"(?:GET|HEAD|POST) (/\S*) HTTP/1\.[01]\r?\n")

MODES = ("honest", "slow", "truncate", "redirect")


class HostileRelay:
    def __init__(
        self, target_port: int = 0, mode: str = "honest", rate: float = 1.0, keep: int = 2000
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"a relay is one of {MODES}")
        self.target_port, self.mode, self.rate, self.keep = target_port, mode, rate, keep
        self.location = ""  # where ``redirect`` sends every request
        self.port = 0
        self.connections = 0
        self.paths: list[str] = []  # what was asked of the node (HTTP request lines seen)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        if self.mode == "redirect":
            await self._redirect(client_r, client_w)
            self._tasks.discard(task)
            return
        try:
            node_r, node_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            self._tasks.discard(task)
            return
        try:
            first = await client_r.readuntil(b"\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            first = b""
        # A map (what the node holds) is told honestly, so the others believe it holds
        # every piece; the lie is in serving them.
        mode = "honest" if b"/map" in first else self.mode
        self.paths += [m.decode() for m in _REQUEST_LINE.findall(first)]
        node_w.write(first)
        up = asyncio.create_task(self._pipe(client_r, node_w, "honest", record=True))
        try:
            await self._pipe(node_r, client_w, mode)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            up.cancel()
            with contextlib.suppress(BaseException):
                await up
            for writer in (client_w, node_w):
                writer.close()
            self._tasks.discard(task)

    async def _redirect(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            while head := await client_r.readuntil(b"\r\n\r\n"):
                self.paths += [m.decode() for m in _REQUEST_LINE.findall(head)]
                path = _REQUEST_LINE.match(head)
                location = self.location + (path.group(1).decode() if path else "/")
                client_w.write(
                    f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {location}\r\n"
                    "Content-Length: 0\r\n\r\n".encode()
                )
                await client_w.drain()
        client_w.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mode: str, record: bool = False
    ) -> None:
        sent = 0
        while True:
            data = await reader.read(1 if mode == "slow" else 65536)
            if not data:
                break
            if mode == "truncate" and sent + len(data) > self.keep:
                writer.write(data[: self.keep - sent])
                await writer.drain()
                return  # and hang up mid-answer
            if record:
                self.paths += [m.decode() for m in _REQUEST_LINE.findall(data)]
            writer.write(data)
            await writer.drain()
            sent += len(data)
            if mode == "slow":
                await asyncio.sleep(1 / self.rate)
        writer.write_eof()
