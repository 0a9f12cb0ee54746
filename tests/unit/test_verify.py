"""The supernode's own checks with a fake piece source: the verdict each answer gives,
handed to a real scheduler (no sockets)."""

from __future__ import annotations

import asyncio
import hashlib
import random
from types import SimpleNamespace

import aiohttp
import pytest

from supernode.scheduler import (
    Check,
    CheckKind,
    Events,
    ParentReport,
    Scheduler,
    SchedulerConfig,
    SourceState,
)
from supernode.verify import CheckConfig, PieceMissing, SourceChecks, SourceRefused
from swarmpull.core.bitfield import full
from swarmpull.core.failures import FailureReason

T = "sha256-" + "ef" * 32
PIECE = 1024
RIGHT = [bytes([i]) * PIECE for i in range(4)]


class FakeProbe:
    """Answers each piece with ``answer(piece)``; counts the calls."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.asked: list[int] = []

    async def get(self, address, source, task_id, piece, length):
        self.asked.append(piece)
        await asyncio.sleep(0)
        return self.answer(piece)


def fake_task():
    blob = SimpleNamespace(have=full(4), geometry=SimpleNamespace(length=lambda piece: PIECE))
    shas = {i: hashlib.sha256(data).hexdigest() for i, data in enumerate(RIGHT)}
    return SimpleNamespace(id=T, blob=blob, sha=shas.get, vouched=lambda have: have & blob.have)


def accused(sched: Scheduler) -> Events:
    sched.add_seed("seed", 100e6)
    sched.add_task(T, 4, "seed")
    for peer in ("src", "r1"):
        sched.peer_joined(peer, 0.0, serves=True)
    sched.join(T, "src", full(4), 0.0)
    assert "src" in {p.id for p in sched.join(T, "r1", 0, 0.0)}
    report = [ParentReport("src", 0, 0.0, 1, FailureReason.CORRUPT)]
    _, events = sched.report(T, "r1", 1.0, have=0, parents=report)
    return events


async def run(answer, config=None):
    sched = Scheduler(SchedulerConfig(), random.Random(1))
    events = accused(sched)
    seen = Events()
    probe = FakeProbe(answer)
    checks = SourceChecks(
        probe, sched, lambda t: fake_task() if t == T else None, lambda p: "http://127.0.0.1:9",
        lambda: 2.0, seen.merge, config,
    )  # fmt: skip
    checks.submit(events.checks)
    while checks.running:
        await asyncio.sleep(0)
    await checks.stop()
    return sched, seen, probe


async def test_right_bytes_clear_the_source_and_strike_its_accuser():
    sched, _, probe = await run(lambda piece: RIGHT[piece])
    assert len(probe.asked) == 1 and sched.state("src") is SourceState.ACTIVE
    assert sched.cleared("src", 3.0).quarantined == []  # nothing left to disprove
    assert sched._standing._strikes["r1"]  # one strike: it lied about src


@pytest.mark.parametrize(
    "answer", [lambda p: b"\xee" * PIECE, lambda p: RIGHT[p][:-1], lambda p: RIGHT[p] + b"x"]
)
async def test_wrong_short_or_long_bytes_quarantine_at_once(answer):
    sched, seen, _ = await run(answer)
    assert seen.quarantined == ["src"] and sched.state("src") is SourceState.QUARANTINED


async def test_no_answer_leaves_it_to_the_witnesses():
    sched, seen, _ = await run(lambda piece: None)
    assert not seen.quarantined and sched.state("src") is SourceState.ACTIVE
    assert not sched._peers["src"].check_until  # no longer waiting for a verdict


async def test_a_full_backlog_gives_checks_up_at_once():
    sched = Scheduler(SchedulerConfig(), random.Random(1))
    events = accused(sched)
    blocked = asyncio.Event()

    class Stuck:
        async def get(self, *args):
            await blocked.wait()

    seen = Events()
    checks = SourceChecks(Stuck(), sched, lambda t: fake_task(), lambda p: "x", lambda: 2.0, seen.merge,
                          CheckConfig(concurrency=1, backlog=0))  # fmt: skip
    checks.submit(events.checks)
    sched.report(T, "r1", 1.5, have=0, parents=[ParentReport("src", 0, 0.0, 1, FailureReason.CORRUPT)])
    checks.submit(events.checks)  # no room: deferred, and a deferred check is no evidence
    assert checks.running == 1 and not sched._peers["src"].check_until
    assert not seen.quarantined and sched.state("src") is SourceState.ACTIVE
    await checks.stop()
    await checks.stop()  # safe twice


async def test_a_source_that_refuses_the_check_is_left_to_the_witnesses():
    # A piece server serves checks outside its slots: a refusal is its own doing.
    def busy(piece):
        raise SourceRefused("it answered 429")

    sched, seen, probe = await run(busy)
    assert len(probe.asked) == 1 and not seen.quarantined  # one witness
    assert not sched._peers["src"].check_until and not sched._peers["src"].deferred
    report = [ParentReport("src", 0, 0.0, 1, FailureReason.CORRUPT)]
    sched.peer_joined("r2", 3.0, serves=True)
    sched.join(T, "r2", 0, 3.0)
    _, events = sched.report(T, "r2", 3.0, have=0, parents=report)
    assert events.quarantined == ["src"]  # the second decides


async def test_holdings_checks_of_a_staller_hold_up_no_accusation():
    # A node that claims holdings and never answers: each check of it takes the deadline.
    sched = Scheduler(SchedulerConfig(), random.Random(1))
    events = accused(sched)
    stalled = asyncio.Event()

    class Probe:
        async def get(self, address, source, task_id, piece, length):
            if source == "staller":
                await stalled.wait()
            return RIGHT[piece]

    seen = Events()
    checks = SourceChecks(Probe(), sched, lambda t: fake_task(), lambda p: "x", lambda: 2.0, seen.merge,
                          CheckConfig(concurrency=1, backlog=4))  # fmt: skip
    claims = [Check(T, "staller", full(4), CheckKind.HOLDINGS) for _ in range(20)]
    checks.submit(claims)
    assert checks.running == 1  # one holdings check of a source at a time
    checks.submit(events.checks)  # the accusation has a line of its own
    for _ in range(20):
        await asyncio.sleep(0)
    assert checks.running == 1 and sched._standing._strikes["r1"]  # checked: src's bytes are right
    await checks.stop()


@pytest.mark.parametrize("said", ["piece", "404", "429"])
async def test_a_claimed_piece_not_held_or_refused_makes_the_holdings_unbelieved(said):
    # A refusal too: a piece server serves checks outside its slots, and a claim the
    # supernode may not see backed would count for the seed's ration as a holder.
    sched = Scheduler(SchedulerConfig(), random.Random(1))
    sched.add_seed("seed", 100e6)
    sched.add_task(T, 4, "seed", piece_size=PIECE)
    sched.peer_joined("liar", 0.0, serves=True)
    sched.join(T, "liar", full(4), 0.0)
    (check,) = sched.take_checks()

    def answer(piece):
        if said == "404":
            raise PieceMissing("404")
        if said == "429":
            raise SourceRefused("it answered 429")
        return RIGHT[piece]

    seen = Events()
    checks = SourceChecks(
        FakeProbe(answer), sched, lambda t: fake_task(), lambda p: "x", lambda: 1.0, seen.merge
    )
    checks.submit([check])
    while checks.running:
        await asyncio.sleep(0)
    assert ("liar" in sched.holdings(T)) is (said == "piece")
    assert sched.state("liar") is SourceState.ACTIVE


async def test_the_probe_says_it_checks_and_tells_a_refusal_from_no_answer():
    from aiohttp import web

    from supernode.verify import HttpProbe
    from swarmpull.edges.transport.gate import CHECK_HEADER

    seen = []

    async def piece(request):
        seen.append(request.headers.get(CHECK_HEADER))
        status = int(request.match_info["piece"])
        return web.Response(status=status, body=RIGHT[0] if status == 200 else b"{}")

    app = web.Application()
    app.router.add_get("/pieces/{task}/{piece}", piece)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    address = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as session:
            probe = HttpProbe(session, "supernode", None)
            assert await probe.get(address, "src", T, 200, PIECE) == RIGHT[0]
            with pytest.raises(PieceMissing):
                await probe.get(address, "src", T, 404, PIECE)
            for refused in (429, 503):  # it serves checks outside its slots: its own doing
                with pytest.raises(SourceRefused):
                    await probe.get(address, "src", T, refused, PIECE)
            # Our capability on an insecure cluster: a node may not know the task's keys yet.
            assert await probe.get(address, "src", T, 403, PIECE) is None
        assert seen == ["1"] * 5
    finally:
        await runner.cleanup()
