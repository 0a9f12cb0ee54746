"""Real services for end-to-end tests: a distribution registry (``docker-registry``, public
or behind htpasswd logins) and isolated containerd instances, each started as a child
process and stopped with it.

Both run as asyncio subprocesses, so the test's event loop keeps serving whatever the
test runs in process (a MiniRegistry, a swarm) while they pull.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import re
import shutil
import signal
import tempfile
from collections import Counter
from pathlib import Path
from typing import IO, NamedTuple

import aiohttp
import bcrypt

from loadtest.services import free_port

START_TIMEOUT = 20.0  # seconds a service may take to answer after it was spawned
STOP_TIMEOUT = 10.0  # seconds after SIGTERM before SIGKILL
SNAPSHOTTER = "overlayfs"

# One Apache combined line per request; a mirror's requests keep their ``?ns=`` query.
_ACCESS = re.compile(
    r'"(?P<method>[A-Z]+) /v2/(?P<name>\S+)/(?P<kind>manifests|blobs)/(?P<reference>[^/?\s]+)(?:\?\S*)?'
    r' HTTP/[\d.]+" (?P<status>\d{3}) '
)

# Plugins an isolated, image-only containerd does not need; "opt" must stay off: it
# creates /opt/containerd.
_DISABLED_PLUGINS = (
    "io.containerd.grpc.v1.cri",
    "io.containerd.internal.v1.opt",
    "io.containerd.internal.v1.restart",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.runtime.v1.linux",
    "io.containerd.runtime.v2.task",
    "io.containerd.monitor.v1.cgroups",
    "io.containerd.service.v1.tasks-service",
    "io.containerd.grpc.v1.tasks",
)


def write_hosts_dir(directory: Path, host: str, server: str | None = None, mirror: str | None = None) -> Path:
    """A ``--hosts-dir`` for ``ctr`` telling it how to reach registry ``host`` (HOST:PORT):
    ``server`` (default ``http://host``), and a pull/resolve ``mirror`` tried first."""
    lines = [f'server = "{server or f"http://{host}"}"']
    if mirror:
        lines += ["", f'[host."{mirror}"]', '  capabilities = ["pull", "resolve"]']
    (directory / host).mkdir(parents=True, exist_ok=True)
    (directory / host / "hosts.toml").write_text("\n".join(lines) + "\n")
    return directory


class Access(NamedTuple):
    """One manifest or blob request in the registry's access log."""

    method: str  # GET, HEAD
    kind: str  # manifests, blobs
    name: str
    reference: str  # a tag or a digest
    status: int


class DockerRegistry:
    """``docker-registry serve`` (distribution 2.8) on a free loopback port, storing under
    ``root``; with ``users`` (name -> password) every request needs one of those logins
    (htpasswd, HTTP basic). Its access log tells which requests it answered."""

    def __init__(
        self, root: Path, binary: str = "docker-registry", users: dict[str, str] | None = None
    ) -> None:
        self.root = root
        self.binary = binary
        self.users = dict(users or {})
        self.port = 0
        self._process: asyncio.subprocess.Process | None = None
        self._logs: list[IO[bytes]] = []

    def __repr__(self) -> str:
        state = "running" if self._process else "stopped"
        return f"<DockerRegistry {self.host if self.port else '-'} {state}>"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def access_log(self) -> Path:
        return self.root / "access.log"

    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = self.root / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: error\n  accesslog:\n    disabled: false\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.root / 'data'}\n"
            "  maintenance:\n    uploadpurging:\n      enabled: false\n"
            f"http:\n  addr: {self.host}\n  secret: swarmpull-e2e-only\n" + self._auth_config()
        )
        stdout, stderr = open(self.access_log, "wb"), open(self.root / "registry.log", "wb")  # noqa: SIM115
        self._logs = [stdout, stderr]
        self._process = await asyncio.create_subprocess_exec(
            self.binary, "serve", str(config), stdout=stdout, stderr=stderr, stdin=asyncio.subprocess.DEVNULL
        )
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise

    async def _wait_ready(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                assert self._process is not None
                if self._process.returncode is not None:
                    raise RuntimeError(
                        f"docker-registry exited at start: {_tail(self.root / 'registry.log')}"
                    )
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"{self.url}/v2/") as resp:
                        if resp.status in (200, 401):  # 401: it wants a login (``users``)
                            return
                if loop.time() > deadline:
                    raise RuntimeError(f"docker-registry did not answer on {self.host}")
                await asyncio.sleep(0.02)

    def _auth_config(self) -> str:
        if not self.users:
            return ""
        htpasswd = self.root / "htpasswd"
        htpasswd.write_text(
            "".join(
                f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
                for user, password in self.users.items()
            )
        )
        return f"auth:\n  htpasswd:\n    realm: swarmpull-e2e\n    path: {htpasswd}\n"

    def authorization(self, user: str) -> str:
        """The ``Authorization`` header of ``user``'s login, for pushing in a test."""
        return "Basic " + base64.b64encode(f"{user}:{self.users[user]}".encode()).decode()

    def accesses(self) -> list[Access]:
        """Every manifest and blob request answered so far, in order, whatever its status
        (any query string, ``?ns=`` included; uploads apart)."""
        if not self.access_log.exists():
            return []
        return [
            Access(m["method"], m["kind"], m["name"], m["reference"], int(m["status"]))
            for m in _ACCESS.finditer(self.access_log.read_text(errors="replace"))
        ]

    def blob_gets(self) -> Counter[str]:
        """Digest -> blob GETs answered 200 so far."""
        return Counter(
            a.reference for a in self.accesses() if (a.method, a.kind, a.status) == ("GET", "blobs", 200)
        )

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            await _terminate(process)
        for log in self._logs:
            log.close()
        self._logs = []


class Containerd:
    """An isolated containerd: its own root, state, sockets and config in a temporary
    directory; no CRI, no runtimes; images only (pull, unpack with overlayfs)."""

    def __init__(self, binary: str = "containerd", ctr_binary: str = "ctr") -> None:
        self.binary = binary
        self.ctr_binary = ctr_binary
        self.root: Path | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    def __repr__(self) -> str:
        state = "running" if self._process else "stopped"
        return f"<Containerd {self.root or '-'} {state}>"

    @property
    def socket(self) -> Path:
        if self.root is None:
            raise RuntimeError("containerd is not started")
        return self.root / "containerd.sock"

    async def start(self) -> None:
        # A short path: a unix socket's path must fit in 108 bytes, and pytest's tmp_path
        # can be longer than that.
        self.root = Path(tempfile.mkdtemp(prefix="swarmpull-ctrd-", dir="/tmp"))
        (self.root / "tmp").mkdir()
        config = self.root / "config.toml"
        config.write_text(_containerd_config(self.root))
        self._log = open(self.root / "containerd.log", "wb")  # noqa: SIM115
        self._process = await asyncio.create_subprocess_exec(
            self.binary,
            "--config",
            str(config),
            stdout=self._log,
            stderr=self._log,
            stdin=asyncio.subprocess.DEVNULL,
        )
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise

    async def _wait_ready(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while True:
            assert self._process is not None and self.root is not None
            if self._process.returncode is not None:
                raise RuntimeError(f"containerd exited at start: {_tail(self.root / 'containerd.log')}")
            if self.socket.exists():
                returncode, _, _ = await self.ctr("version", check=False)
                if returncode == 0:
                    return
            if loop.time() > deadline:
                raise RuntimeError(f"containerd did not answer: {_tail(self.root / 'containerd.log')}")
            await asyncio.sleep(0.02)

    async def ctr(self, *args: str, check: bool = True) -> tuple[int, str, str]:
        """Run ``ctr -a <socket> ARGS``: (return code, stdout, stderr); with ``check``, a
        RuntimeError carrying ctr's stderr when it fails."""
        process = await asyncio.create_subprocess_exec(
            self.ctr_binary,
            "-a",
            str(self.socket),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
        try:
            out, err = await process.communicate()
        except BaseException:  # cancelled: no ctr outlives the test
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise
        assert process.returncode is not None
        stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
        if check and process.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)} failed ({process.returncode}): {stderr.strip()}")
        return process.returncode, stdout, stderr

    async def pull(self, ref: str, hosts_dir: Path) -> None:
        """Pull and unpack ``ref``, reaching its registry as ``hosts_dir`` says."""
        await self.ctr("images", "pull", "--hosts-dir", str(hosts_dir), ref)

    async def is_unpacked(self, ref: str) -> bool:
        """True if ``ref`` is complete and unpacked: ``ctr images check`` says so AND the
        snapshot named by the chain id of the config's diff_ids is committed."""
        _, out, _ = await self.ctr("images", "check", "--snapshotter", SNAPSHOTTER)
        # Columns: REF TYPE DIGEST STATUS SIZE UNPACKED; STATUS and SIZE contain spaces.
        row = next((line.split() for line in out.splitlines()[1:] if line.split()[:1] == [ref]), None)
        if row is None or row[-1] != "true" or "complete" not in row:
            return False
        manifest = json.loads((await self.ctr("content", "get", row[2]))[1])
        if "manifests" in manifest:  # an index: the linux/amd64 image
            digest = next(
                m["digest"]
                for m in manifest["manifests"]
                if m.get("platform", {}).get("architecture") == "amd64"
            )
            manifest = json.loads((await self.ctr("content", "get", digest))[1])
        config = json.loads((await self.ctr("content", "get", manifest["config"]["digest"]))[1])
        returncode, info, _ = await self.ctr(
            "snapshots",
            "--snapshotter",
            SNAPSHOTTER,
            "info",
            chain_id(config["rootfs"]["diff_ids"]),
            check=False,
        )
        return returncode == 0 and json.loads(info).get("Kind") == "Committed"

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            await _terminate(process)
        if self._log is not None:
            self._log.close()
            self._log = None
        root, self.root = self.root, None
        if root is not None:
            await _unmount_below(root)
            await asyncio.to_thread(shutil.rmtree, root, ignore_errors=True)


def chain_id(diff_ids: list[str]) -> str:
    """The id of the snapshot holding layers ``diff_ids`` stacked: chain0 = diff_id0,
    chainN = sha256(chainN-1 + " " + diff_idN)."""
    chain = diff_ids[0]
    for diff_id in diff_ids[1:]:
        chain = "sha256:" + hashlib.sha256(f"{chain} {diff_id}".encode()).hexdigest()
    return chain


def _containerd_config(root: Path) -> str:
    plugins = "".join(f'  "{name}",\n' for name in _DISABLED_PLUGINS)
    return (
        "version = 2\n"
        f'root = "{root}/root"\nstate = "{root}/state"\ntemp = "{root}/tmp"\n'
        f"disabled_plugins = [\n{plugins}]\n\n"
        f'[grpc]\n  address = "{root}/containerd.sock"\n\n'
        f'[ttrpc]\n  address = "{root}/containerd.sock.ttrpc"\n\n'
        '[debug]\n  address = ""\n\n'
        '[metrics]\n  address = ""\n\n'
        '[plugins."io.containerd.gc.v1.scheduler"]\n  startup_delay = "100ms"\n\n'
        '[timeouts]\n  "io.containerd.timeout.bolt.open" = "5s"\n'
    )


async def _terminate(process: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL if it lingers; always reaped."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


async def _unmount_below(root: Path) -> None:
    """Lazily unmount whatever an interrupted unpack left mounted under ``root``, deepest
    first, so removing the directory cannot reach into a mounted layer."""
    prefix = f"{root}/"
    with open("/proc/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    for point in sorted(points, reverse=True):
        process = await asyncio.create_subprocess_exec(
            "umount", "-l", point, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        await process.wait()


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:].strip() or "(empty log)"
    except OSError:
        return "(no log)"
