"""The supernode's own check of a source accused of serving corrupt pieces, or claiming
pieces it could not have fetched.

When a requester with standing reports a parent's piece corrupt, or a source claims
pieces it could not have fetched (any at an open, more than ``claim_rate`` allows in a
report), the scheduler asks for a check (``Check``). This module does its I/O: it fetches
one of those pieces from the source, as any requester would (``GET
/pieces/{task}/{piece}``, over mutual TLS with the supernode's certificate), and compares
the bytes' sha256 with the one the supernode signed. The verdict goes back to the
scheduler, which decides: a mismatch quarantines the source at once, right bytes make an
accusation a lie (``scheduler/standing``), no answer leaves it to the witnesses; a
claimed piece the source does not hold makes its holdings unbelieved (it leaves the task).
A piece server serves the supernode's checks outside its upload slots and line, over
mutual TLS (a source's slots held by liars must not make it look silent), so a source
that answers a check with anything but the piece (busy, stopping) refused it: for an
accusation the witnesses decide, as without an answer; claimed holdings are not believed. A check we
could not make (no room in our line, nothing to compare) is no evidence either way: the
accusation waits for the next check (``deferred``), so that nobody can have an honest
source quarantined by keeping the supernode from checking it.

Checks are few and small: the scheduler asks at most one of each kind per source (or
member) per ``check_interval``; here at most ``concurrency`` of each kind run at once
(the rest wait, up to ``backlog``), each within ``deadline`` seconds. Accusations and
holdings claims wait in lines of their own, and a source has at most one holdings check
under way: a node that claims holdings and never answers (each check of it takes the
whole deadline) delays only its own checks.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from supernode.scheduler import Check, CheckKind, Events, Scheduler
from supernode.seed_task import SeedTask
from swarmpull.core.bitfield import random_bit
from swarmpull.core.capability import CAPABILITY_HEADER
from swarmpull.edges.http import PEER_HEADER, read_at_most
from swarmpull.edges.tls import ClusterTls
from swarmpull.edges.transport.gate import CHECK_HEADER

log = logging.getLogger(__name__)


class Verdict(enum.Enum):
    CORRUPT = "corrupt"  # the source sent bytes that do not match the signed sha256
    RIGHT = "right"  # it sent the right bytes: the accusation was false
    MISSING = "missing"  # it does not hold the piece (a lie, if it just claimed it)
    UNKNOWN = "unknown"  # it did not answer: the witnesses decide
    REFUSED = "refused"  # it answered, not with the piece: as UNKNOWN, and claims not believed
    DEFERRED = "deferred"  # not checked (no room here, nothing to ask for): no evidence


class PieceMissing(Exception):
    """The source answered that it does not hold the piece (404)."""


class SourceRefused(Exception):
    """The source answered, but not with the piece (busy, stopping, forbidden)."""


@dataclass(frozen=True, slots=True)
class CheckConfig:
    """How the supernode checks accused sources."""

    concurrency: int = 4
    """Checks of each kind (accusations, holdings claims) running at once."""
    backlog: int = 64
    """Checks of each kind waiting for a turn; beyond that a check is deferred."""
    deadline: float = 5.0
    """Seconds one check may take, connection included (a piece is small)."""


class PieceProbe(Protocol):
    """Fetches one piece's bytes from a source (``None``: no answer; ``PieceMissing``: it
    does not hold it; ``SourceRefused``: it answered something else)."""

    async def get(self, address: str, source: str, task_id: str, piece: int, length: int) -> bytes | None: ...


class HttpProbe:
    """A piece over the piece servers' own protocol, no compression, nothing kept."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        caller: str,
        tls: ClusterTls | None,
        capability: Callable[[str], str | None] = lambda task_id: None,
    ) -> None:
        self._session = session
        self._tls = tls
        self._headers = {PEER_HEADER: caller, CHECK_HEADER: "1", "Accept-Encoding": "identity"}
        # Piece servers ask every caller for a capability; a supernode certificate stands
        # for one, but an insecure cluster has no certificates: the probe carries its own.
        self._capability = capability

    async def get(self, address: str, source: str, task_id: str, piece: int, length: int) -> bytes | None:
        tls_args = self._tls.to_node(source) if self._tls is not None else {}
        url = f"{address}/pieces/{task_id}/{piece}"
        headers = dict(self._headers)
        capability = self._capability(task_id)
        if capability is not None:
            headers[CAPABILITY_HEADER] = capability
        try:
            async with self._session.get(url, headers=headers, allow_redirects=False, **tls_args) as resp:
                if resp.status == 404:
                    raise PieceMissing(f"{source} does not hold piece {piece}")
                if resp.status == 403 and self._tls is None:
                    return None  # our capability, on an insecure cluster: it may not know the keys yet
                if resp.status != 200:
                    raise SourceRefused(f"it answered {resp.status}")
                try:
                    return await read_at_most(resp.content, length)  # a longer body is wrong bytes too
                except aiohttp.ClientPayloadError:
                    return b""  # cut before the length it announced: not the piece either
        except (aiohttp.ClientError, OSError):
            return None


class SourceChecks:
    """Runs the scheduler's checks and hands their verdicts back to it (the one writer)."""

    def __init__(
        self,
        probe: PieceProbe,
        scheduler: Scheduler,
        task: Callable[[str], SeedTask | None],
        address: Callable[[str], str | None],
        monotonic: Callable[[], float],
        on_events: Callable[[Events], None],
        config: CheckConfig | None = None,
        rng: random.Random | None = None,
        on_verdict: Callable[[Verdict], None] | None = None,
    ) -> None:
        self.config = config or CheckConfig()
        self._probe = probe
        self._scheduler = scheduler
        self._task = task
        self._address = address
        self._monotonic = monotonic
        self._on_events = on_events
        self._rng = rng or random.Random()
        self._on_verdict = on_verdict  # counts them (metrics)
        self._slots = {kind: asyncio.Semaphore(self.config.concurrency) for kind in CheckKind}
        self._lines = {kind: 0 for kind in CheckKind}  # checks of each kind under way or waiting
        self._holdings: set[str] = set()  # sources with a holdings check under way or waiting
        self._running: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<SourceChecks running={len(self._running)}>"

    @property
    def running(self) -> int:
        """Checks under way or waiting for a turn."""
        return len(self._running)

    def submit(self, checks: list[Check]) -> None:
        """Start these checks (called on the event loop, from the service)."""
        for check in checks:
            holdings = check.kind is CheckKind.HOLDINGS
            if holdings and check.source in self._holdings:
                continue  # one at a time: its claims wait for the next interval
            if self._lines[check.kind] >= self.config.concurrency + self.config.backlog:
                self._verdict(check, Verdict.DEFERRED, "too many checks at once")
                continue
            self._lines[check.kind] += 1
            if holdings:
                self._holdings.add(check.source)
            run = asyncio.create_task(self._run(check), name=f"check-{check.source}")
            self._running.add(run)
            run.add_done_callback(self._running.discard)

    async def stop(self) -> None:
        """Cancel the checks under way (safe twice)."""
        for run in list(self._running):
            run.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)

    async def _run(self, check: Check) -> None:
        try:
            verdict, why = await self._check(check)
        except Exception as exc:  # a bug in one check must not leave the witnesses waiting
            log.exception("check of %s failed", check.source)
            verdict, why = Verdict.DEFERRED, f"{type(exc).__name__}"
        finally:
            self._lines[check.kind] -= 1
            if check.kind is CheckKind.HOLDINGS:
                self._holdings.discard(check.source)
        self._verdict(check, verdict, why)

    async def _check(self, check: Check) -> tuple[Verdict, str]:
        task = self._task(check.task_id)
        address = self._address(check.source)
        blob = task.blob if task is not None else None
        if task is None or blob is None or address is None:
            return Verdict.DEFERRED, "task or source gone"
        known = task.vouched(check.have)
        if not known:
            return Verdict.DEFERRED, "it holds no piece we can check"
        piece = random_bit(known, self._rng)
        expected, length = task.sha(piece), blob.geometry.length(piece)
        if expected is None:
            return Verdict.DEFERRED, f"no sha256 of piece {piece}"
        async with self._slots[check.kind]:
            try:
                async with asyncio.timeout(self.config.deadline):
                    data = await self._probe.get(address, check.source, task.id, piece, length)
            except TimeoutError:
                return Verdict.UNKNOWN, f"piece {piece} not sent within {self.config.deadline:g} s"
            except PieceMissing:
                return Verdict.MISSING, f"it does not hold piece {piece}"
            except SourceRefused as exc:
                return Verdict.REFUSED, f"piece {piece}: {exc}"
        if data is None:
            return Verdict.UNKNOWN, f"piece {piece} not sent"
        if len(data) == length and (await asyncio.to_thread(_sha256, data)) == expected:
            return Verdict.RIGHT, f"piece {piece} matches its sha256"
        return Verdict.CORRUPT, f"piece {piece} does not match its sha256"

    def _verdict(self, check: Check, verdict: Verdict, why: str) -> None:
        """The scheduler decides what the verdict means (its one writer: on the loop)."""
        now = self._monotonic()
        if self._on_verdict is not None:
            self._on_verdict(verdict)
        if verdict is Verdict.CORRUPT:
            log.warning("checked %s myself: %s", check.source, why)
            events = self._scheduler.confirm_corrupt(check.source, now)
        elif check.kind is CheckKind.HOLDINGS:
            if verdict not in (Verdict.MISSING, Verdict.REFUSED):  # unanswered, deferred: they stand
                log.debug("checked the holdings %s claimed: %s", check.source, why)
                return
            log.warning("checked the holdings %s claimed: %s; not believed", check.source, why)
            events = self._scheduler.holdings_refuted(check.task_id, check.source, now)
        elif verdict is Verdict.RIGHT:
            log.warning("checked %s myself: %s; its accusers lied", check.source, why)
            events = self._scheduler.cleared(check.source, now)
        elif verdict is Verdict.DEFERRED:
            log.info("could not check %s: %s; its accusers wait for another check", check.source, why)
            events = self._scheduler.check_deferred(check.source, now)
        else:
            log.info("could not check %s: %s; the witnesses decide", check.source, why)
            events = self._scheduler.check_failed(check.source, now)
        self._on_events(events)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
