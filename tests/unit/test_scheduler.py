"""The parent scheduler fed events directly: no sockets, no asyncio, time passed in."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supernode.scheduler import ParentReport, Scheduler, SchedulerConfig, SeedId, SourceState, UnknownPeer
from supernode.scheduler.choose import child_cap
from swarmpull.core.bitfield import full
from swarmpull.core.failures import FailureReason

T = "sha256-" + "ab" * 32
SEED = "seed"
NOW = 1000.0


def make(pieces: int = 8, seeded: bool = True, seed_capacity: float = 100e6, **config) -> Scheduler:
    sched = Scheduler(SchedulerConfig(**config), random.Random(7))
    sched.add_seed(SEED, seed_capacity)
    sched.add_task(T, pieces, SEED)
    if seeded:
        for piece in range(pieces):
            sched.piece_seeded(T, piece)
    return sched


def join(sched, *peers, zone=None, rack=None, capacity=100e6):
    for peer in peers:
        sched.peer_joined(peer, NOW, serves=True, zone=zone, rack=rack, capacity=capacity)


def ids(parents):
    return [p.id for p in parents]


def test_a_requester_gets_peer_parents_and_the_seed_while_it_has_room():
    sched = make(parents=3, seed_children=2)
    join(sched, *(f"p{i}" for i in range(6)))
    for source in ("p3", "p4", "p5"):
        sched.join(T, source, full(8), NOW)  # complete: they need no parents, nor the seed
    first = sched.join(T, "p0", 0, NOW)
    assert SEED in ids(first) and len(first) == 4 and "p0" not in ids(first)
    sched.join(T, "p1", 0, NOW)
    third = sched.join(T, "p2", 0, NOW)
    assert SEED not in ids(third)  # the seed took its two children already
    assert len(third) == 3 and all(not p.seed for p in third)


def test_a_burst_of_requesters_spreads_over_the_sources():
    """Load counts from the moment of the choice: nobody gets more children than its room."""
    sched = make(parents=2, children_per_parent=1.0, seed_children=1)
    peers = [f"p{i}" for i in range(40)]
    join(sched, *peers)
    for peer in peers:
        sched.join(T, peer, 0, NOW)
    children = {p: 0 for p in peers}
    for peer in peers:
        for parent in sched.parents_of(T, peer):
            if not parent.seed:
                children[parent.id] += 1
    assert max(children.values()) <= 2  # cap: children_per_parent * parents
    assert sum(children.values()) >= 70  # and nearly everyone got its two parents


def test_same_rack_then_same_zone_first():
    sched = make(parents=1, seed_children=1)
    join(sched, "far", zone="b", rack="b1")
    join(sched, "zone", zone="a", rack="a2")
    join(sched, "rack", zone="a", rack="a1")
    join(sched, "me", zone="a", rack="a1")
    for peer in ("far", "zone", "rack"):
        sched.join(T, peer, full(8), NOW)  # complete holders, equally useful
    parents = [p for p in sched.join(T, "me", 0, NOW) if not p.seed]
    assert ids(parents) == ["rack"]


def test_the_most_useful_sources_win():
    sched = make(parents=1, seed_children=1)
    join(sched, "empty", "half", "me")
    sched.join(T, "empty", 0, NOW)
    sched.join(T, "half", 0b00001111, NOW)
    parents = [p for p in sched.join(T, "me", 0, NOW) if not p.seed]
    assert ids(parents) == ["half"]


def test_a_bad_parent_is_replaced_and_kept_away_for_a_while():
    sched = make(parents=1, seed_children=1, blacklist_seconds=60.0)
    join(sched, "a", "b", "me")
    sched.join(T, "a", full(8), NOW)
    sched.join(T, "b", full(8), NOW)
    first = [p.id for p in sched.join(T, "me", 0, NOW) if not p.seed]
    parents, _ = sched.report(T, "me", NOW + 1, have=0, bad=first)
    second = [p.id for p in parents if not p.seed]
    assert second and second != first
    parents, _ = sched.report(T, "me", NOW + 2, have=0, bad=second)
    assert [p.id for p in parents if not p.seed] == []  # both refused: nobody is given back
    parents, _ = sched.report(T, "me", NOW + 62, have=0)
    assert [p.id for p in parents if not p.seed] in (["a"], ["b"])  # the blacklist lapsed


def test_reports_count_only_about_parents_the_reporter_was_given():
    """A liar cannot quarantine or drop an honest source it was never sent to."""
    sched = make(parents=1, seed_children=1, corrupt_witnesses=1, failure_witnesses=1)
    join(sched, "honest", "liar")
    sched.join(T, "honest", full(8), NOW)
    sched.join(T, "liar", 0, NOW)
    liar_parents = [p.id for p in sched.parents_of(T, "liar") if not p.seed]
    victim = "honest" if "honest" not in liar_parents else None
    join(sched, "other")
    sched.join(T, "other", full(8), NOW)
    target = victim or "other"
    for reason in (FailureReason.CORRUPT, FailureReason.UNREACHABLE):
        _, events = sched.report(
            T, "liar", NOW + 1, have=0, parents=[ParentReport(target, 0, 0.0, 1, reason)]
        )
        assert not events.quarantined and not events.dropped
    assert sched.state(target) is SourceState.ACTIVE and sched.knows_peer(target)


def test_corruption_needs_two_witnesses_then_the_source_is_given_to_no_one():
    """Without the supernode's own check (``check_seconds=0``, the simulator), two
    requesters' word quarantines a source (with it: tests/unit/test_standing.py)."""
    sched = make(parents=1, seed_children=1, children_per_parent=3.0, check_seconds=0)
    join(sched, "bad", "r1", "r2", "r3")
    sched.join(T, "bad", full(8), NOW)
    for requester in ("r1", "r2", "r3"):
        assert [p.id for p in sched.join(T, requester, 0, NOW) if not p.seed] == ["bad"]
    report = [ParentReport("bad", 0, 0.0, 1, FailureReason.CORRUPT)]
    _, events = sched.report(T, "r1", NOW + 1, have=0, parents=report)
    assert not events.quarantined and sched.state("bad") is SourceState.ACTIVE
    _, events = sched.report(T, "r2", NOW + 1, have=0, parents=report)
    assert events.quarantined == ["bad"] and sched.state("bad") is SourceState.QUARANTINED
    assert "bad" not in ids(sched.parents_of(T, "r3"))  # taken from everyone at once
    sched.peer_joined("bad", NOW + 2, serves=True)  # a re-registration does not launder it
    assert sched.state("bad") is SourceState.QUARANTINED
    sched.peer_seen("bad", NOW + 3690)
    sched.expire(NOW + 3700)  # an hour later it may serve again
    assert sched.state("bad") is SourceState.ACTIVE


def test_two_requesters_finding_a_source_unreachable_drop_it():
    sched = make(parents=1, seed_children=1)
    join(sched, "gone", "r1", "r2")
    sched.join(T, "gone", full(8), NOW)
    sched.join(T, "r1", 0, NOW)
    sched.join(T, "r2", 0, NOW)
    report = [ParentReport("gone", 0, 0.0, 2, FailureReason.UNREACHABLE)]
    _, events = sched.report(T, "r1", NOW + 1, have=0, parents=report)
    assert not events.dropped
    _, events = sched.report(T, "r2", NOW + 1, have=0, parents=report)
    assert events.dropped == ["gone"] and not sched.knows_peer("gone")


def test_timeouts_degrade_a_stalled_source_not_a_loaded_one():
    """Two requesters' timeouts degrade a source that delivers to nobody; a source that
    still delivers to a third requester is loaded, and stays in service."""
    for serving in (False, True):
        sched = make(parents=1, seed_children=1, children_per_parent=3.0)
        join(sched, "src", "r1", "r2", "r3")
        sched.join(T, "src", full(8), NOW)
        for requester in ("r1", "r2", "r3"):
            assert [p.id for p in sched.join(T, requester, 0, NOW) if not p.seed] == ["src"]
        if serving:
            sched.report(T, "r3", NOW + 1, have=1, parents=[ParentReport("src", 1 << 20, 2.0, 0, None)])
        timeout = [ParentReport("src", 0, 0.0, 1, FailureReason.TIMEOUT)]
        sched.report(T, "r1", NOW + 2, have=0, parents=timeout)
        _, events = sched.report(T, "r2", NOW + 2, have=0, parents=timeout)
        expected = SourceState.ACTIVE if serving else SourceState.DEGRADED
        assert sched.state("src") is expected and (events.degraded == []) is serving


def test_two_requesters_measuring_a_source_slow_degrade_it_though_it_delivers():
    """``slow`` is a rate measured while the bytes came, not a missed deadline: a source
    that trickles its pieces to everyone delivers now and then (its short ones), and is
    degraded all the same."""
    sched = make(parents=1, seed_children=1, children_per_parent=3.0)
    join(sched, "src", "r1", "r2", "r3")
    sched.join(T, "src", full(8), NOW)
    for requester in ("r1", "r2", "r3"):
        sched.join(T, requester, 0, NOW)
    sched.report(T, "r3", NOW + 1, have=1, parents=[ParentReport("src", 1 << 20, 2.0, 0, None)])
    slow = [ParentReport("src", 0, 0.0, 1, FailureReason.SLOW)]
    _, events = sched.report(T, "r1", NOW + 2, have=0, parents=slow)
    assert sched.state("src") is SourceState.ACTIVE  # one witness is not enough
    _, events = sched.report(T, "r2", NOW + 2, have=0, parents=slow)
    assert sched.state("src") is SourceState.DEGRADED and events.degraded == [
        ("src", "slow transfers at 2 requesters")
    ]


def test_silent_peers_expire():
    sched = make(peer_timeout=30.0)
    join(sched, "quiet", "chatty")
    sched.join(T, "quiet", 0, NOW)
    sched.peer_seen("chatty", NOW + 20)
    events = sched.expire(NOW + 31)
    assert events.dropped == ["quiet"] and sched.knows_peer("chatty")
    with pytest.raises(UnknownPeer):
        sched.peer_seen("quiet", NOW + 32)


def test_a_complete_member_lets_its_parents_go():
    sched = make(parents=1, seed_children=1, children_per_parent=1.0)
    join(sched, "src", "a", "b")
    sched.join(T, "src", full(8), NOW)
    assert [p.id for p in sched.join(T, "a", 0, NOW) if not p.seed] == ["src"]
    assert [p.id for p in sched.join(T, "b", 0, NOW) if not p.seed] == ["a"]  # src has no room
    parents, _ = sched.report(T, "a", NOW + 1, have=full(8))
    assert parents == []  # done: no parents, and src's room is free again
    parents, _ = sched.report(T, "b", NOW + 1, have=0, drop=["a"])
    assert "src" in ids(parents)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["join", "report", "bad", "drop", "leave", "corrupt", "seed", "expire"]),
            st.integers(0, 11),
            st.integers(0, (1 << 6) - 1),
        ),
        max_size=80,
    )
)
def test_invariants_hold_whatever_the_events(events):
    """No source takes a child beyond its room (room shrinks when faster peers join and
    raise the typical capacity; children taken before are kept, not shed); nobody is its
    own parent; nobody gets a quarantined or unknown source as a parent; a live requester
    that asks while some source has room and pieces it lacks gets at least one parent."""
    config = SchedulerConfig(parents=2, seed_children=2, corrupt_witnesses=1)
    sched = Scheduler(config, random.Random(3))
    sched.add_seed(SEED, 200e6)
    sched.add_task(T, 6, SEED)
    peers = [f"p{i}" for i in range(12)]
    now = NOW
    lowest = math.inf  # the lowest typical capacity so far: when each source had most room
    for kind, who, bits in events:
        peer = peers[who]
        now += 0.5
        if kind == "seed":
            sched.piece_seeded(T, bits % 6)
            continue
        if kind == "expire":
            sched.expire(now)
            continue
        if not sched.knows_peer(peer):
            sched.peer_joined(peer, now, serves=who % 4 != 0, capacity=50e6 * (1 + who % 3))
        if kind == "leave":
            sched.peer_left(peer, now)
            continue
        if kind == "join":
            parents = sched.join(T, peer, bits, now)
        else:
            current = [p.id for p in sched.parents_of(T, peer)]
            target = current[bits % len(current)] if current else None
            reports = []
            if kind == "corrupt" and target:
                reports = [ParentReport(target, 0, 0.0, 1, FailureReason.CORRUPT)]
            parents, _ = sched.report(
                T, peer, now, have=bits, parents=reports,
                drop=[target] if kind == "drop" and target else [],
                bad=[target] if kind == "bad" and target else [],
            )  # fmt: skip
        assert peer not in ids(parents)
        for parent in parents:
            if not parent.seed:
                assert sched.knows_peer(parent.id) and sched.state(parent.id) is not SourceState.QUARANTINED
        task = sched._tasks[T]
        typical = task.typical_capacity(config.default_capacity)
        lowest = min(lowest, typical)
        for member in task.members.values():
            source = sched._peers[member.peer_id]
            assert len(member.children) <= child_cap(source, lowest, config)
        member = task.members[peer]
        if not member.done and not parents:
            for source_id in task.sources:
                holder = task.members[source_id]
                source = sched._peers[source_id]
                usable = source_id != peer and source.state is SourceState.ACTIVE
                usable = usable and not member.blacklisted(source_id, now)
                assert not (usable and len(holder.children) < child_cap(source, typical, config)), (
                    f"{peer} got no parent while {source_id} had room"
                )


def test_holders_count_live_members_that_hold_a_piece():
    sched = Scheduler(SchedulerConfig(), random.Random(1))
    sched.add_seed(SEED, 100e6)
    sched.add_task(T, 4, SEED)
    for peer, have in (("a", 0b0011), ("b", 0b0001), ("c", 0b0000)):
        sched.peer_joined(peer, NOW, serves=True)
        sched.join(T, peer, have, NOW)
    assert [sched.holders(T, piece) for piece in range(4)] == [2, 1, 0, 0]
    assert sched.holders(T, 0, limit=1) == 1  # counting stops there
    sched.peer_left("a", NOW)
    assert sched.holders(T, 0) == 1
    assert sched.holders("no-such-task", 0) == 0


def test_a_holder_a_requester_dropped_as_bad_is_no_holder_for_it():
    # Two holders that refuse everyone would keep the seed's ration on "peers hold it".
    sched = Scheduler(SchedulerConfig(blacklist_seconds=60.0), random.Random(1))
    sched.add_seed(SEED, 100e6)
    sched.add_task(T, 4, SEED)
    for peer, have in (("a", 0b0001), ("b", 0b0001), ("r", 0), ("s", 0)):
        sched.peer_joined(peer, NOW, serves=True)
        sched.join(T, peer, have, NOW)
    sched.report(T, "r", NOW + 1, have=0, bad=["a"])
    assert sched.holders(T, 0, "r", NOW + 1) == 1  # b still counts for r
    assert sched.holders(T, 0, "s", NOW + 1) == sched.holders(T, 0) == 2  # and both for s
    sched.report(T, "r", NOW + 2, have=0, bad=["b"])
    assert sched.holders(T, 0, "r", NOW + 2) == 0
    assert sched.holders(T, 0, "r", NOW + 70) == 2  # kept away for blacklist_seconds
    assert sched.holders(T, 0, "stranger", NOW + 2) == 2  # not a member: every holder


def test_no_peer_takes_the_seeds_id():
    # A peer named as the seed would replace it, or its leave would remove it: every
    # task then has no seed (a 500 on every open and report until a restart).
    sched = make()
    join(sched, "r1")
    with pytest.raises(SeedId):
        sched.peer_joined(SEED, NOW, serves=True)
    assert not sched.peer_left(SEED, NOW).dropped
    with pytest.raises(UnknownPeer):
        sched.join(T, SEED, 0, NOW)  # nor does anyone act as it
    with pytest.raises(UnknownPeer):
        sched.peer_seen(SEED, NOW)
    assert not sched.knows_peer(SEED) and sched.is_seed(SEED)
    sched.add_task("sha256-" + "cd" * 32, 4, SEED)  # still there: tasks are created with it
    parents = sched.join(T, "r1", 0, NOW)
    assert SEED in ids(parents)


def test_a_member_keeps_away_its_own_parents_only_and_a_bounded_number():
    from supernode.scheduler.state import MAX_KEPT_AWAY

    sched = make(blacklist_seconds=5.0)
    join(sched, "r1", *(f"p{i}" for i in range(MAX_KEPT_AWAY + 10)))
    parents = [p for p in ids(sched.join(T, "r1", 0, NOW)) if p != SEED]
    made_up = [f"nobody{i}" for i in range(1000)]
    sched.report(T, "r1", NOW, have=0, bad=made_up)  # ids nobody will ever look up
    member = sched._tasks[T].members["r1"]
    assert not member.blacklist
    others = [f"p{i}" for i in range(MAX_KEPT_AWAY + 10) if f"p{i}" not in parents]
    sched.report(T, "r1", NOW, have=0, bad=others)  # sources it was never given
    assert not member.blacklist
    sched.report(T, "r1", NOW, have=0, bad=parents)
    assert set(member.blacklist) == set(parents)
    for i in range(MAX_KEPT_AWAY + 10):
        member.keep_away(f"p{i}", NOW, 5.0)
    assert len(member.blacklist) == MAX_KEPT_AWAY
    member.keep_away("p0", NOW + 10, 5.0)  # the rest expired: they go first
    assert list(member.blacklist) == ["p0"]
