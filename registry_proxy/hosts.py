"""containerd's registry host configuration (``hosts.toml``), written for the proxy.

For each registry, ``<config_path>/<host>/hosts.toml`` names the real registry as
``server`` and the proxy as a mirror with ``pull`` and ``resolve``; ``_default`` covers
every registry not listed. containerd tries the mirror first and the server if the
mirror fails, so a stopped proxy never stops a pull. A file we replace is kept as
``hosts.toml.swarmpull-backup`` and put back by ``remove``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

MARK = "# written by swarmpull containerd-config"
BACKUP = "hosts.toml.swarmpull-backup"
DOCKER_HUB = "docker.io"


@dataclass(frozen=True, slots=True)
class RegistryEntry:
    """``host`` as containerd names it, and the ``server`` URL (None for _default)."""

    host: str
    server: str | None

    @classmethod
    def parse(cls, text: str) -> RegistryEntry:
        """``docker.io``, ``ghcr.io``, ``my.registry:5000`` (HTTPS) or ``http://host:port``."""
        if text == "_default":
            return cls("_default", None)
        if "://" in text:
            parts = urlsplit(text)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
                raise ValueError(f"a registry is HOST[:PORT] or a scheme://HOST[:PORT] URL, not {text!r}")
            return cls(parts.netloc.lower(), f"{parts.scheme}://{parts.netloc.lower()}")
        host = text.strip().lower().rstrip("/")
        if not host or "/" in host or " " in host:
            raise ValueError(f"a registry is HOST[:PORT] or a scheme://HOST[:PORT] URL, not {text!r}")
        if host == DOCKER_HUB:
            return cls(host, "https://registry-1.docker.io")
        return cls(host, f"https://{host}")


def hosts_toml(entry: RegistryEntry, mirror: str) -> str:
    lines = [MARK]
    if entry.server is not None:
        lines.append(f'server = "{entry.server}"')
    lines += ["", f'[host."{mirror.rstrip("/")}"]', '  capabilities = ["pull", "resolve"]', ""]
    return "\n".join(lines)


def write(config_path: Path, entry: RegistryEntry, mirror: str) -> Path:
    """Write (atomically) the hosts.toml of one registry; back up a foreign one first."""
    directory = config_path / entry.host
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "hosts.toml"
    backup = directory / BACKUP
    if target.exists() and MARK not in target.read_text() and not backup.exists():
        os.replace(target, backup)
    tmp = directory / ".hosts.toml.tmp"
    tmp.write_text(hosts_toml(entry, mirror))
    os.replace(tmp, target)
    return target


def remove(config_path: Path, entry: RegistryEntry) -> str:
    """Undo ``write``: our file goes, a backup comes back. Returns what was done."""
    directory = config_path / entry.host
    target = directory / "hosts.toml"
    backup = directory / BACKUP
    if target.exists() and MARK not in target.read_text():
        return f"{target}: not written by swarmpull, left alone"
    target.unlink(missing_ok=True)
    if backup.exists():
        os.replace(backup, target)
        return f"{target}: restored the previous file"
    if directory.exists() and not any(directory.iterdir()):
        directory.rmdir()
    return f"{target}: removed"


def containerd_hint(config_path: Path, containerd_config: Path) -> str | None:
    """What to add to containerd's config.toml if it does not read ``config_path`` yet."""
    try:
        text = containerd_config.read_text()
    except OSError:
        text = ""
    if "config_path" in text:
        return None
    return (
        f"add to {containerd_config}, then restart containerd:\n"
        f'  [plugins."io.containerd.grpc.v1.cri".registry]\n'
        f'    config_path = "{config_path}"'
    )
