"""Evidence before quarantine, and standing: the scheduler fed events directly, the
supernode's checks answered by hand (no sockets, time passed in)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from supernode.scheduler import Check, CheckKind, ParentReport, Scheduler, SchedulerConfig, SourceState
from supernode.scheduler.standing import Standing, StandingConfig
from swarmpull.core.bitfield import full
from swarmpull.core.failures import FailureReason

T = "sha256-" + "cd" * 32
SEED = "seed"
NOW = 1000.0
CORRUPT = FailureReason.CORRUPT
UNREACHABLE = FailureReason.UNREACHABLE


def swarm(sources=("src",), requesters=("r1", "r2", "r3", "r4", "r5"), **config) -> Scheduler:
    """Each requester gets every source as a parent (room for all)."""
    config = {"parents": len(sources), "seed_children": 1, "children_per_parent": 10.0} | config
    sched = Scheduler(SchedulerConfig(**config), random.Random(5))
    sched.add_seed(SEED, 100e6)
    sched.add_task(T, 8, SEED)
    for piece in range(8):
        sched.piece_seeded(T, piece)
    for peer in (*sources, *requesters):
        sched.peer_joined(peer, NOW, serves=True)
    for source in sources:
        sched.join(T, source, full(8), NOW)
    for requester in requesters:
        got = {p.id for p in sched.join(T, requester, 0, NOW) if not p.seed}
        assert set(sources) <= got
    return sched


def claim(sched, reporter, source, reason, now):
    _, events = sched.report(T, reporter, now, have=0, parents=[ParentReport(source, 0, 0.0, 1, reason)])
    return events


def served(sched, requester, source, now):
    _, events = sched.report(T, requester, now, have=0, parents=[ParentReport(source, 1 << 20, 1.0, 0, None)])
    return events


def test_one_corrupt_report_asks_for_a_check_and_a_mismatch_quarantines_at_once():
    sched = swarm()
    events = claim(sched, "r1", "src", CORRUPT, NOW + 1)
    assert events.checks == [Check(T, "src", full(8))] and not events.quarantined
    assert sched.state("src") is SourceState.ACTIVE
    events = sched.confirm_corrupt("src", NOW + 2)
    assert events.quarantined == ["src"] and sched.state("src") is SourceState.QUARANTINED
    assert "src" not in {p.id for p in sched.parents_of(T, "r2")}


def test_liars_cannot_quarantine_a_source_the_check_found_right():
    sched = swarm()
    events = claim(sched, "r1", "src", CORRUPT, NOW + 1)
    assert len(events.checks) == 1
    # A second accuser while the check runs: the witnesses wait for it.
    events = claim(sched, "r2", "src", CORRUPT, NOW + 1.5)
    assert not events.quarantined and not events.checks
    sched.cleared("src", NOW + 2)
    # A third after it, within check_interval: disproved by the check just made.
    events = claim(sched, "r3", "src", CORRUPT, NOW + 3)
    assert not events.quarantined and not events.checks
    assert sched.state("src") is SourceState.ACTIVE
    # One lie is a strike, not yet a loss of standing (an honest requester can earn one).
    assert all(sched.has_standing(r, NOW + 3) for r in ("r1", "r2", "r3"))
    # After check_interval a new accusation brings a new check, never a quarantine alone.
    events = claim(sched, "r4", "src", CORRUPT, NOW + 70)
    assert len(events.checks) == 1 and not events.quarantined


def test_a_reporter_caught_lying_about_two_sources_loses_standing_and_is_ignored():
    sched = swarm(sources=("a", "b", "c"))
    claim(sched, "r1", "a", CORRUPT, NOW + 1)
    assert sched.cleared("a", NOW + 2).unheeded == []
    claim(sched, "r1", "b", CORRUPT, NOW + 3)
    assert sched.cleared("b", NOW + 4).unheeded == ["r1"]  # said once
    assert not sched.has_standing("r1", NOW + 5)
    # Its claims now count for nothing: no check, no witness.
    assert not claim(sched, "r1", "c", CORRUPT, NOW + 6).checks
    claim(sched, "r2", "c", CORRUPT, NOW + 7)
    assert not sched.check_failed("c", NOW + 8).quarantined  # r2 alone is one witness
    # Standing comes back as the strikes age out (an hour).
    assert sched.has_standing("r1", NOW + 4 + 3600.5)


def test_without_a_verdict_in_time_nobody_is_quarantined_and_the_next_accusation_brings_a_check():
    # A verdict that does not come is a check that waited its turn (liars can fill the
    # line), not a source that did not answer (that is a verdict: ``check_failed``).
    sched = swarm()
    claim(sched, "r1", "src", CORRUPT, NOW + 1)
    claim(sched, "r2", "src", CORRUPT, NOW + 2)
    assert sched.state("src") is SourceState.ACTIVE  # waiting for the check
    events = sched.expire(NOW + 1 + 10.5)  # check_seconds passed without a verdict
    assert not events.quarantined and sched.state("src") is SourceState.ACTIVE
    events = claim(sched, "r3", "src", CORRUPT, NOW + 22)  # check_seconds after the deferral
    assert len(events.checks) == 1 and not events.quarantined
    assert sched.check_failed("src", NOW + 23).quarantined == ["src"]  # it did not answer


def test_a_deferred_check_is_no_evidence():
    sched = swarm()
    claim(sched, "r1", "src", CORRUPT, NOW + 1)
    claim(sched, "r2", "src", CORRUPT, NOW + 2)
    assert not sched.check_deferred("src", NOW + 3).quarantined
    events = claim(sched, "r3", "src", CORRUPT, NOW + 4)  # three witnesses, and no check yet:
    assert not events.checks and not events.quarantined  # they wait (not one check a report)
    assert sched.state("src") is SourceState.ACTIVE
    assert len(claim(sched, "r4", "src", CORRUPT, NOW + 13).checks) == 1


def test_a_failed_check_leaves_one_witness_one_witness():
    sched = swarm()
    claim(sched, "r1", "src", CORRUPT, NOW + 1)
    assert not sched.check_failed("src", NOW + 2).quarantined
    assert sched.state("src") is SourceState.ACTIVE


def test_unreachable_claims_contradicted_by_others_cost_standing():
    sched = swarm(sources=("a", "b", "c"), requesters=("liar", "r1", "r2", "r3"), failure_witnesses=3)
    for source, start in (("a", NOW + 1), ("b", NOW + 10)):
        claim(sched, "liar", source, UNREACHABLE, start)
        unheeded = []
        for i, requester in enumerate(("r1", "r2", "r3")):
            unheeded += served(sched, requester, source, start + 1 + i).unheeded
        assert unheeded == ([] if source == "a" else ["liar"])
    assert not sched.has_standing("liar", NOW + 20)
    # Its word no longer counts toward dropping anyone.
    claim(sched, "liar", "c", UNREACHABLE, NOW + 21)
    claim(sched, "r1", "c", UNREACHABLE, NOW + 22)
    claim(sched, "r2", "c", UNREACHABLE, NOW + 23)
    assert sched.knows_peer("c")  # two witnesses with standing, three needed


def test_an_unreachable_claim_that_others_confirm_costs_nothing():
    sched = swarm(failure_witnesses=9)
    claim(sched, "r1", "src", UNREACHABLE, NOW + 1)
    served(sched, "r2", "src", NOW + 2)  # one other got bytes: not enough to call it a lie
    claim(sched, "r3", "src", UNREACHABLE, NOW + 3)
    assert sched.has_standing("r1", NOW + 4) and sched.has_standing("r3", NOW + 4)


def test_timeouts_cost_no_standing():
    sched = swarm(sources=("a", "b"), failure_witnesses=9)
    for source in ("a", "b"):
        claim(sched, "r1", source, FailureReason.TIMEOUT, NOW + 1)
        for requester in ("r2", "r3", "r4"):
            served(sched, requester, source, NOW + 2)
    assert sched.has_standing("r1", NOW + 3)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["lie", "claim", "serve"]), st.integers(0, 30), st.integers(0, 30)),
        max_size=200,
    )
)
def test_standing_memory_is_bounded_and_a_liar_never_regains_standing_early(steps):
    config = StandingConfig(reporters=8, claims=4, strike_seconds=100.0)
    standing = Standing(config)
    now = 0.0
    struck: dict[str, dict[str, float]] = {}
    for kind, who, source in steps:
        now += 1.0
        reporter, target = f"p{who}", f"s{source}"
        if kind == "lie":
            standing.disproved(reporter, target, now)
            struck.setdefault(reporter, {})[target] = now
        elif kind == "claim":
            standing.claimed_unreachable(reporter, target, now)
        else:
            standing.delivered(target, reporter, now)
        assert len(standing._strikes) <= config.reporters and len(standing._sources) <= config.claims
        for reporter in struck:
            if reporter not in standing._strikes:  # forgotten (the bound): its standing is back
                struck[reporter] = {}
    for reporter, strikes in struck.items():
        live = [t for t in strikes.values() if t > now - config.strike_seconds]
        if len(live) >= config.strikes_to_lose:
            assert not standing.counts(reporter, now)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 4), st.integers(0, 2), st.floats(0.0, 40.0), st.booleans()),
        max_size=120,
    )
)
def test_liars_never_quarantine_a_source_whose_checks_find_it_right(steps):
    """However many liars accuse honest sources, in any order and at any pace: while the
    supernode's check of each answers within ``check_seconds`` that its bytes are right,
    no source is quarantined and no liar loses its standing before lying about two."""
    liars = [f"liar{i}" for i in range(5)]
    sources = ("a", "b", "c")
    sched = swarm(sources=sources, requesters=liars)
    now = NOW
    lied: dict[str, set[str]] = {}
    for liar, source, step, late in steps:
        now += step
        for peer in (*sources, *liars):
            sched.peer_seen(peer, now)
        sched.expire(now)
        who, target = liars[liar], sources[source]
        if sched.has_standing(who, now):
            lied.setdefault(who, set()).add(target)
        events = claim(sched, who, target, CORRUPT, now)
        for check in events.checks:
            if late:  # the verdict comes within check_seconds (10)
                now += 9.0
                sched.expire(now)
            sched.cleared(check.source, now)
        for peer in sources:
            assert sched.state(peer) is not SourceState.QUARANTINED
        assert not events.quarantined
    for who in liars:
        if len(lied.get(who, ())) < 2:
            assert sched.has_standing(who, now)


def test_a_reporter_without_standing_contradicts_nobody():
    config = StandingConfig(contradict_witnesses=1)
    sched = swarm(sources=("a", "b", "c"), requesters=("r1", "r2", "r3"), standing=config)
    for source, at in (("a", NOW + 1), ("b", NOW + 3)):
        claim(sched, "r2", source, CORRUPT, at)
        sched.cleared(source, at + 1)
    assert not sched.has_standing("r2", NOW + 5)
    claim(sched, "r1", "c", UNREACHABLE, NOW + 6)
    served(sched, "r2", "c", NOW + 7)  # a liar's word that c serves it: no contradiction
    _, events = sched.report(T, "r3", NOW + 8, have=0, parents=[ParentReport("c", 0, 0.0, 1, UNREACHABLE)])
    assert events.dropped == ["c"] and sched.has_standing("r1", NOW + 8)


def claims_swarm(**config) -> Scheduler:
    sched = Scheduler(SchedulerConfig(**config), random.Random(5))
    sched.add_seed(SEED, 100e6)
    sched.add_task(T, 64, SEED, piece_size=1 << 20)  # 64 pieces of 1 MiB
    for piece in range(64):
        sched.piece_seeded(T, piece)
    for peer in ("liar", "honest", "quiet"):
        sched.peer_joined(peer, NOW, serves=peer != "quiet")
    return sched


def test_holdings_claimed_at_an_open_are_checked_and_a_refuted_claim_is_dropped():
    sched = claims_swarm()
    sched.join(T, "honest", 0, NOW)
    assert sched.take_checks() == []  # nothing claimed
    sched.join(T, "liar", full(64), NOW)  # a liar, or a restart: the supernode cannot tell
    (check,) = sched.take_checks()
    assert (check.source, check.kind, check.have) == ("liar", CheckKind.HOLDINGS, full(64))
    assert sched.take_checks() == []
    assert sched.holders(T, 0) == 1  # believed until the check says otherwise
    sched.holdings_refuted(T, "liar", NOW + 1)  # it did not hold the piece asked for
    assert sched.holders(T, 0) == 0 and "liar" not in sched.holdings(T)
    assert "liar" not in {p.id for p in sched.report(T, "honest", NOW + 2, have=0)[0]}
    sched.join(T, "quiet", full(64), NOW)  # not a source: nobody fetches from it
    assert sched.take_checks() == []


def test_holdings_that_grow_faster_than_a_node_can_fetch_are_checked():
    sched = claims_swarm(claim_rate=10 << 20)  # 10 MiB/s: 10 pieces a second
    sched.join(T, "honest", 0, NOW)
    _, events = sched.report(T, "honest", NOW + 2, have=full(20))  # 20 pieces in 2 s: possible
    assert events.checks == []
    _, events = sched.report(T, "honest", NOW + 3, have=full(64))  # 44 more in 1 s: not
    (check,) = events.checks
    assert check.kind is CheckKind.HOLDINGS and check.have == full(64) & ~full(20)
    # Bytes it holds: the claim stands (a check that finds the piece changes nothing).
    assert sched.holdings(T)["honest"] == full(64)


def test_a_report_without_an_open_is_checked_like_an_open():
    sched = claims_swarm()
    sched.join(T, "honest", 0, NOW)
    sched.take_checks()
    _, events = sched.report(T, "liar", NOW + 3600, have=full(64))
    assert [c.source for c in events.checks] == ["liar"]


def test_registering_again_wipes_neither_a_degraded_spell_nor_the_witnesses():
    # A source re-registered to start afresh: its spell ended, its accusers' word was
    # forgotten (attack round 7's lead).
    sched = swarm(check_seconds=0, peer_timeout=600.0)  # no checks: the witnesses decide
    claim(sched, "r1", "src", CORRUPT, NOW + 1)  # one witness
    claim(sched, "r3", "src", FailureReason.SLOW, NOW + 1)
    claim(sched, "r4", "src", FailureReason.SLOW, NOW + 1)  # two: degraded for a while
    assert sched.state("src") is SourceState.DEGRADED
    sched.peer_joined("src", NOW + 2, serves=True)
    sched.join(T, "src", full(8), NOW + 2)
    assert sched.state("src") is SourceState.DEGRADED
    sched.expire(NOW + 2 + sched.config.degraded_seconds + 1)
    assert sched.state("src") is SourceState.ACTIVE  # the spell ends when it ends
    later = NOW + 3 + sched.config.degraded_seconds
    sched.report(T, "r2", later, have=0)  # given src again
    assert claim(sched, "r2", "src", CORRUPT, later).quarantined == ["src"]  # r1's word stayed
