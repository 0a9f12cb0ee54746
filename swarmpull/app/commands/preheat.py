"""``swarmpull preheat IMAGE``: push an image to every selected node ahead of a surge.

The supernode resolves the image, reads each blob from the registry once and has every
selected node fetch them in the background over BitTorrent (``POST /api/v1/preheat``).
This command follows the job (``GET /api/v1/preheat/{id}``): a progress line redrawn on
a terminal, a line per change otherwise. Exit status 0 once every selected node holds
every blob verified; 1 with the nodes that did not finish when the deadline passed.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from typing import Any

from swarmpull.app.args import (
    INSECURE_WARNING,
    CommandError,
    UsageError,
    add_cluster_tls_arguments,
    cluster_tls,
    labels_arg,
    url_arg,
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_arg(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``2h``, ``1d``."""
    match = _DURATION.match(text)
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"a duration looks like 90s, 30m or 2h, not {text!r}")
    return float(match.group(1)) * _SECONDS[match.group(2) or "s"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "preheat",
        help="push an image to every selected node in the background, ahead of a surge",
        description="Have every selected node fetch IMAGE's blobs in the background (BitTorrent, "
        "uTP by default), read from the registry once by the supernode. Exits 0 when every "
        "selected node holds every blob verified; 1 with the nodes that did not finish in time.",
    )
    p.add_argument("image", metavar="IMAGE", help="e.g. registry.example.com/team/app:v1 or ...@sha256:...")
    p.add_argument(
        "--platform",
        default="linux/amd64",
        metavar="OS/ARCH",
        help="the platform's manifest of a multi-platform image, or all (default: %(default)s)",
    )
    p.add_argument(
        "--select",
        type=labels_arg,
        default={},
        metavar="zone=Z,rack=R,node=ID",
        help="only the nodes with these labels (default: every node)",
    )
    p.add_argument(
        "--deadline",
        type=duration_arg,
        default="1h",
        metavar="DURATION",
        help="give up on nodes not done by then, e.g. 30m (default: %(default)s)",
    )
    p.add_argument(
        "--supernode",
        type=url_arg,
        default="http://127.0.0.1:65003",
        metavar="URL",
        help="the supernode's API (default: %(default)s)",
    )
    # With mutual TLS, starting a preheat needs a supernode certificate (an operator's
    # act: docs/SECURITY.md, "Who may do what").
    add_cluster_tls_arguments(p)
    p.set_defaults(func=run, default_log_level="warning")


def selection(labels: dict[str, str]) -> dict[str, Any]:
    unknown = set(labels) - {"zone", "rack", "node"}
    if unknown:
        raise UsageError(f"--select knows zone=, rack= and node=, not {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {k: labels[k] for k in ("zone", "rack") if k in labels}
    if "node" in labels:
        out["nodes"] = labels["node"].split("+")
    return out


def run(args: argparse.Namespace) -> int:
    from swarmpull.edges.daemon import run_coroutine

    body = {
        "image": args.image,
        "platform": args.platform,
        "select": selection(args.select),
        "deadline": args.deadline,
    }
    from swarmpull.core.identity import Role

    tls = cluster_tls(args, Role.SUPERNODE)
    if tls is not None and not args.supernode.startswith("https://"):
        raise UsageError(f"with --tls-dir the supernode is an https:// URL, not {args.supernode}")
    if tls is None:
        logging.getLogger("swarmpull").warning("%s", INSECURE_WARNING)
    tls_args = tls.to_supernode() if tls is not None else {}
    return run_coroutine(lambda: follow(args.supernode, body, tls_args=tls_args))


async def follow(
    supernode: str, body: dict[str, Any], interval: float = 1.0, tls_args: dict[str, Any] | None = None
) -> int:
    import asyncio

    import aiohttp

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        session = _Session(session, tls_args or {})
        status = await _call(session, "POST", f"{supernode}/api/v1/preheat", body)
        job = status.get("id")
        if not isinstance(job, str):
            raise CommandError("the supernode answered without a preheat id")
        display = Display(sys.stderr)
        print(f"preheat {job}: {status.get('image')} ({status.get('platform')})", file=sys.stderr, flush=True)
        while True:
            display.show(status)
            if status.get("state") not in ("resolving", "running"):
                break
            await asyncio.sleep(interval)
            try:
                status = await _call(session, "GET", f"{supernode}/api/v1/preheat/{job}")
            except CommandError as exc:
                print(f"swarmpull: {exc}; asking again", file=sys.stderr, flush=True)
        display.close()
    state = status.get("state")
    if state == "complete":
        print(
            f"preheat {job} complete: {status.get('selected')} nodes hold {status.get('image')} "
            f"({len(status.get('layers') or [])} blobs, {status.get('bytes')} bytes each)"
        )
        return 0
    if state == "failed":
        raise CommandError(f"preheat {job} failed: {status.get('error')}")
    unfinished = status.get("unfinished") or []
    nodes = ", ".join(str(n) for n in unfinished) if unfinished else "no node matched the selection"
    raise CommandError(f"preheat {job} expired; not finished by the deadline: {nodes}")


class _Session:
    """A session whose every request passes ``tls_args`` (``ClusterTls.to_supernode``:
    the cluster's ssl context, and the name the supernode's certificate must carry)."""

    def __init__(self, session: Any, tls_args: dict[str, Any]) -> None:
        self._session = session
        self._tls_args = tls_args

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        return self._session.request(method, url, **kwargs, **self._tls_args)


async def _call(session: Any, method: str, url: str, body: Any = None) -> dict[str, Any]:
    import aiohttp

    try:
        async with session.request(method, url, json=body) as resp:
            try:
                payload = await resp.json(content_type=None)
            except ValueError:
                payload = {}
            if resp.status >= 400:
                error = payload.get("error", {}) if isinstance(payload, dict) else {}
                message = error.get("message") if isinstance(error, dict) else None
                raise CommandError(f"{url}: {resp.status} {message or resp.reason}")
            if not isinstance(payload, dict):
                raise CommandError(f"{url}: the answer is not a JSON object")
            return payload
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise CommandError(f"cannot reach {url}: {exc or type(exc).__name__}") from None


class Display:
    """A line redrawn on a terminal; on a pipe, a line each time the progress changes."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._last = ""
        self._started = time.monotonic()

    def show(self, status: dict[str, Any]) -> None:
        layers = status.get("layers") or []
        nodes = status.get("nodes") or {}
        total = int(status.get("bytes") or 0) * max(1, len(nodes))
        held = sum(int(n.get("bytes", 0)) for n in nodes.values() if isinstance(n, dict))
        share = held / total if total else 0.0
        line = (
            f"{status.get('state')}: {status.get('finished', 0)}/{status.get('selected', 0)} nodes done, "
            f"{sum(1 for layer in layers if layer.get('seeded'))}/{len(layers)} blobs seeded, "
            f"{share:.0%} of the bytes, {float(status.get('deadline_in') or 0):.0f}s to the deadline"
        )
        if self._tty:
            self._stream.write(f"\r\x1b[K{line}")
            self._stream.flush()
        elif line.split(", ")[:3] != self._last.split(", ")[:3]:
            self._stream.write(f"  {time.monotonic() - self._started:6.1f}s {line}\n")
            self._stream.flush()
        self._last = line

    def close(self) -> None:
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()
