"""Test kit: a flood of connections that never make a request, as an attacker (or a
broken client) opens them: ``idle`` ones send nothing, ``slowloris`` ones send a request
header a line at a time and never finish it. A connection the server closes is opened
again at once, so the pressure lasts until the flood stops.

``FloodProcess`` runs floods in a child process, as an attacker on another host would:
the churn of thousands of sockets then costs the test's own event loop (and the honest
client in it) nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys

SLOW_LINE_EVERY = 2.0  # seconds between two header lines of a slowloris connection
MODES = ("idle", "slowloris")


class SocketFlood:
    """``count`` connections to ``host:port``, held open and reopened, in this process."""

    def __init__(self, host: str, port: int, count: int, mode: str = "idle") -> None:
        if mode not in MODES:
            raise ValueError("a flood is idle or slowloris")
        self.host, self.port, self.count, self.mode = host, port, count, mode
        self.opened = 0  # connections opened, ever
        self.closed_by_server = 0
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._hold()) for _ in range(self.count)]

    async def until_open(self) -> None:
        """Until every connection was opened once (the kernel completes a connect before
        the server accepts it: a backlog counts)."""
        while self.opened < self.count:
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _hold(self) -> None:
        while True:
            try:
                async with asyncio.timeout(10):
                    reader, writer = await asyncio.open_connection(self.host, self.port)
            except (OSError, TimeoutError):
                await asyncio.sleep(0.2)
                continue
            self.opened += 1
            try:
                if self.mode == "idle":
                    await reader.read()  # until the server closes it
                else:
                    writer.write(b"GET /healthz HTTP/1.1\r\nHost: flood\r\n")
                    line = 0
                    while not reader.at_eof():
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(SLOW_LINE_EVERY):
                                await reader.read(1024)
                        writer.write(b"X-Slow-%d: still coming\r\n" % line)
                        line += 1
            except OSError:
                pass
            self.closed_by_server += 1
            writer.close()


class FloodProcess:
    """Floods in a child process: ``targets`` are (port, count, mode) on 127.0.0.1.
    ``start()`` returns once every connection was opened; ``stop()`` returns how many
    connections the servers closed."""

    def __init__(self, targets: list[tuple[int, int, str]]) -> None:
        self._targets = targets
        self._process: asyncio.subprocess.Process | None = None

    @property
    def count(self) -> int:
        return sum(count for _, count, _ in self._targets)

    async def start(self, timeout: float = 120.0) -> None:
        args = [f"{port}:{count}:{mode}" for port, count, mode in self._targets]
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.kit.floods", *args, stdout=asyncio.subprocess.PIPE
        )
        assert self._process.stdout is not None
        async with asyncio.timeout(timeout):
            line = await self._process.stdout.readline()
        if line.strip() != b"open":
            raise RuntimeError(f"the flood did not open its connections: {line!r}")

    async def stop(self) -> int:
        """Stop flooding; the connections the servers closed meanwhile."""
        if self._process is None or self._process.returncode is not None:
            return 0
        self._process.send_signal(signal.SIGTERM)
        out, _ = await self._process.communicate()
        return json.loads(out or b"{}").get("closed_by_server", 0)


async def _flood(targets: list[str]) -> None:
    floods = []
    for target in targets:
        port, count, mode = target.split(":")
        floods.append(SocketFlood("127.0.0.1", int(port), int(count), mode))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    for flood in floods:
        flood.start()
    await asyncio.gather(*(flood.until_open() for flood in floods))
    print("open", flush=True)
    await stop.wait()
    for flood in floods:
        await flood.stop()
    print(json.dumps({"closed_by_server": sum(f.closed_by_server for f in floods)}), flush=True)


if __name__ == "__main__":
    asyncio.run(_flood(sys.argv[1:]))
