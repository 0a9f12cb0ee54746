"""The scheduler fed events directly, with a fake clock: no sockets, no asyncio."""

from __future__ import annotations

import random

import pytest

from supernode.scheduler import (
    Assignment,
    Failure,
    FailureReason,
    Scheduler,
    SchedulerConfig,
    SourceState,
    UnknownPeer,
)
from swarmpull.core.clock import FakeClock

T = "sha256-" + "ab" * 32
SEED = "seed"


def make(pieces: int = 4, seed_slots: int = 4, seeded: bool = True, **config):
    """A scheduler with one task of ``pieces`` 4 MiB pieces. Uploads are bounded by slots
    only (a slow pace), unless a test sets ``piece_pace`` itself."""
    config.setdefault("piece_pace", 10.0)
    clock = FakeClock()
    sched = Scheduler(SchedulerConfig(**config), random.Random(7))
    sched.add_seed(SEED, seed_slots)
    sched.add_task(T, pieces, SEED)
    if seeded:
        for piece in range(pieces):
            sched.piece_seeded(T, piece, clock.now)
    return sched, clock


def join(sched, clock, *peers, slots=4, zone=None, rack=None):
    for peer in peers:
        sched.peer_joined(peer, clock.now, slots=slots, zone=zone, rack=rack)


def mine(decisions, peer):
    return decisions.assignments.get((T, peer), [])


def test_rarest_piece_first():
    sched, clock = make(pieces=4)
    join(sched, clock, "a", "b", "c", "r")
    sched.announce(T, "a", [0, 1, 2], clock.now)
    sched.announce(T, "b", [0, 1], clock.now)
    sched.announce(T, "c", [0], clock.now)
    batch = mine(sched.sync(T, "r", clock.now, want=4), "r")
    assert [a.piece for a in batch] == [3, 2, 1, 0]
    assert batch[0].source == SEED  # nobody but the seed holds piece 3


def test_pieces_in_flight_count_towards_rarity():
    sched, clock = make(pieces=4)
    join(sched, clock, "r1", "r2", "r3", "r4")
    got = [mine(sched.sync(T, r, clock.now, want=1), r)[0].piece for r in ("r1", "r2", "r3", "r4")]
    assert sorted(got) == [0, 1, 2, 3]


def test_peer_preferred_over_seed_and_seed_used_when_peers_saturated():
    sched, clock = make(pieces=1, seed_slots=10)
    join(sched, clock, "a", "b", slots=2)
    sched.announce(T, "a", [0], clock.now)
    sched.announce(T, "b", [0], clock.now)
    requesters = [f"r{i}" for i in range(5)]
    join(sched, clock, *requesters)
    sources = [mine(sched.sync(T, r, clock.now, want=1), r)[0].source for r in requesters]
    assert sorted(sources[:4]) == ["a", "a", "b", "b"]  # spread by load
    assert sources[4] == SEED  # both peers full
    assert sched.load("a") == (2, 2) and sched.load("b") == (2, 2)


def test_load_relative_to_capacity():
    sched, clock = make(pieces=1)
    join(sched, clock, "small", slots=1)
    join(sched, clock, "big", slots=8)
    sched.announce(T, "small", [0], clock.now)
    sched.announce(T, "big", [0], clock.now)
    requesters = [f"r{i}" for i in range(6)]
    join(sched, clock, *requesters)
    sources = [mine(sched.sync(T, r, clock.now, want=1), r)[0].source for r in requesters]
    assert sources.count("big") == 5 and sources.count("small") == 1


def test_nothing_assigned_when_every_source_is_full():
    sched, clock = make(pieces=1, seed_slots=1)
    join(sched, clock, "r1", "r2")
    assert mine(sched.sync(T, "r1", clock.now, want=1), "r1") == [Assignment(0, SEED)]
    assert mine(sched.sync(T, "r2", clock.now, want=1), "r2") == []


def test_same_rack_then_same_zone_preferred():
    sched, clock = make(pieces=1)
    join(sched, clock, "far", zone="z2", rack="x")
    join(sched, clock, "zone", zone="z1", rack="other")
    join(sched, clock, "rack", zone="z1", rack="r1")
    for peer in ("far", "zone", "rack"):
        sched.announce(T, peer, [0], clock.now)
    join(sched, clock, "me", zone="z1", rack="r1")
    join(sched, clock, "me2", zone="z1", rack="r9")
    assert mine(sched.sync(T, "me", clock.now, want=1), "me")[0].source == "rack"
    sched.sync(T, "me", clock.now, finished=[0])
    # "rack" is free again, "me" now holds it too; me2 shares zone z1 but not the rack:
    # the same-zone peers "zone", "rack" and "me" tie on locality, least loaded wins.
    assert mine(sched.sync(T, "me2", clock.now, want=1), "me2")[0].source in {"zone", "rack", "me"}


def test_unreachable_source_blacklisted_for_the_requester_then_forgiven():
    sched, clock = make(pieces=1, seed_slots=0, blacklist_seconds=60)
    join(sched, clock, "a", "b", "r")
    sched.announce(T, "a", [0], clock.now)
    first = mine(sched.sync(T, "r", clock.now, want=1), "r")[0]
    other = "b" if first.source == "a" else "a"
    sched.announce(T, other, [0], clock.now)
    failure = Failure(0, first.source, FailureReason.UNREACHABLE)
    retry = mine(sched.sync(T, "r", clock.now, failed=[failure], want=1), "r")
    assert retry == [Assignment(0, other)]
    sched.sync(T, "r", clock.now, failed=[Failure(0, other, FailureReason.TIMEOUT)])
    assert mine(sched.sync(T, "r", clock.now, want=1), "r") == []  # both blacklisted
    clock.advance(61)
    assert len(mine(sched.sync(T, "r", clock.now, want=1), "r")) == 1


def test_corrupt_source_quarantined_for_everyone():
    sched, clock = make(pieces=1, seed_slots=4)
    join(sched, clock, "bad", "r1", "r2")
    sched.announce(T, "bad", [0], clock.now)
    assert mine(sched.sync(T, "r1", clock.now, want=1), "r1")[0].source == "bad"
    decisions = sched.sync(T, "r1", clock.now, failed=[Failure(0, "bad", FailureReason.CORRUPT)], want=1)
    assert decisions.quarantined == ["bad"]
    assert sched.state("bad") is SourceState.QUARANTINED
    assert mine(decisions, "r1") == [Assignment(0, SEED)]
    assert mine(sched.sync(T, "r2", clock.now, want=1), "r2") == [Assignment(0, SEED)]
    # Re-registering does not launder a quarantine.
    sched.peer_joined("bad", clock.now, slots=4)
    assert sched.state("bad") is SourceState.QUARANTINED


def test_source_reported_unreachable_by_two_requesters_is_dropped():
    sched, clock = make(pieces=2, seed_slots=0)
    join(sched, clock, "gone", "r1", "r2")
    sched.announce(T, "gone", [0, 1], clock.now)
    for r in ("r1", "r2"):
        assert mine(sched.sync(T, r, clock.now, want=1), r)[0].source == "gone"
    sched.sync(T, "r1", clock.now, failed=[Failure(0, "gone", FailureReason.UNREACHABLE)])
    assert sched.knows_peer("gone")
    piece = sched.in_flight(T, "r2")
    (p2,) = piece
    decisions = sched.sync(T, "r2", clock.now, failed=[Failure(p2, "gone", FailureReason.UNREACHABLE)])
    assert decisions.dropped == ["gone"]
    assert not sched.knows_peer("gone") and sched.holders(T, 0) == set()


def test_missing_piece_removes_the_holding():
    sched, clock = make(pieces=1, seed_slots=0)
    join(sched, clock, "a", "r")
    sched.announce(T, "a", [0], clock.now)
    mine(sched.sync(T, "r", clock.now, want=1), "r")
    sched.sync(T, "r", clock.now, failed=[Failure(0, "a", FailureReason.MISSING)])
    assert sched.holders(T, 0) == set()
    assert sched.knows_peer("a") and sched.state("a") is SourceState.ACTIVE


def test_departed_source_reschedules_its_transfers():
    sched, clock = make(pieces=1, seed_slots=1)
    join(sched, clock, "a", "b", "r")
    sched.announce(T, "a", [0], clock.now)
    assert mine(sched.sync(T, "r", clock.now, want=1), "r")[0].source == "a"
    sched.peer_left("a", clock.now)
    assert sched.in_flight(T, "r") == {}
    assert mine(sched.sync(T, "r", clock.now, want=1), "r") == [Assignment(0, SEED)]


def test_departed_requester_frees_its_sources():
    sched, clock = make(pieces=2, seed_slots=2)
    join(sched, clock, "r")
    assert len(mine(sched.sync(T, "r", clock.now, want=2), "r")) == 2
    assert sched.load(SEED) == (2, 2)
    sched.peer_left("r", clock.now)
    assert sched.load(SEED) == (0, 2)


def test_silent_peer_dropped_after_timeout_and_its_holdings_forgotten():
    sched, clock = make(pieces=1, peer_timeout=30)
    join(sched, clock, "quiet", "chatty")
    sched.announce(T, "quiet", [0], clock.now)
    clock.advance(20)
    sched.peer_seen("chatty", clock.now)
    clock.advance(15)
    decisions = sched.expire(clock.now)
    assert decisions.dropped == ["quiet"]
    assert sched.holders(T, 0) == set()
    with pytest.raises(UnknownPeer):
        sched.peer_seen("quiet", clock.now)
    sched.peer_seen("chatty", clock.now)


def test_overdue_assignment_taken_back():
    sched, clock = make(pieces=1, seed_slots=1, assignment_timeout=100, peer_timeout=1000)
    join(sched, clock, "slow", "other")
    assert mine(sched.sync(T, "slow", clock.now, want=1), "slow")
    for _ in range(33):  # it keeps syncing (it is alive) but never reports the piece
        clock.advance(3)
        sched.sync(T, "slow", clock.now)
        sched.expire(clock.now)
    assert sched.load(SEED) == (1, 1)
    sched.sync(T, "other", clock.now, want=1, park=True)
    clock.advance(2)
    sched.sync(T, "slow", clock.now)
    decisions = sched.expire(clock.now)
    assert sched.in_flight(T, "slow") == {}
    assert mine(decisions, "other") == [Assignment(0, SEED)]  # the freed slot went on


def test_endgame_adds_a_second_source_after_a_delay_first_copy_wins():
    sched, clock = make(pieces=2, seed_slots=4, endgame_pieces=2, endgame_delay=1.0)
    join(sched, clock, "a", "r")
    sched.announce(T, "a", [0, 1], clock.now)
    batch = mine(sched.sync(T, "r", clock.now, want=2), "r")
    assert {a.source for a in batch} == {"a"}
    assert mine(sched.sync(T, "r", clock.now, want=2), "r") == []  # too early
    clock.advance(1.5)
    dups = mine(sched.sync(T, "r", clock.now, want=2), "r")
    assert sorted(dups, key=lambda a: a.piece) == [Assignment(0, SEED), Assignment(1, SEED)]
    assert mine(sched.sync(T, "r", clock.now, want=2), "r") == []  # one duplicate each
    sched.sync(T, "r", clock.now, finished=[0, 1])
    assert sched.load("a") == (0, 4) and sched.load(SEED) == (0, 4)
    assert sched.in_flight(T, "r") == {}


def test_parked_peer_woken_when_a_piece_is_seeded():
    sched, clock = make(pieces=2, seeded=False)
    join(sched, clock, "r")
    assert mine(sched.sync(T, "r", clock.now, want=2, park=True), "r") == []
    assert sched.is_waiting(T, "r")
    decisions = sched.piece_seeded(T, 1, clock.now)
    assert mine(decisions, "r") == [Assignment(1, SEED)]
    assert not sched.is_waiting(T, "r")


def test_parked_peer_woken_when_a_slot_frees():
    sched, clock = make(pieces=1, seed_slots=1)
    join(sched, clock, "r1", "r2")
    mine(sched.sync(T, "r1", clock.now, want=1), "r1")
    assert mine(sched.sync(T, "r2", clock.now, want=1, park=True), "r2") == []
    decisions = sched.sync(T, "r1", clock.now, finished=[0])
    assert mine(decisions, "r2") in ([Assignment(0, "r1")], [Assignment(0, SEED)])


def test_waking_stops_after_misses_and_rotates_the_queue():
    sched, clock = make(pieces=1, seed_slots=0, wake_misses=2)
    waiters = [f"w{i}" for i in range(5)]
    join(sched, clock, "a", *waiters, slots=1)
    for w in waiters:
        sched.sync(T, w, clock.now, want=1, park=True)
    # w0 now holds the piece (one upload slot): w0 is done and leaves the queue, w1 gets
    # w0, w2 and w3 find w0 full: two misses end the round, so w4 was not tried.
    sched.announce(T, "w0", [0], clock.now)
    assert sched.in_flight(T, "w1") == {0: ["w0"]}
    assert sched.waiting(T) == ["w4", "w2", "w3"]


def test_complete_peer_is_not_parked():
    sched, clock = make(pieces=1)
    join(sched, clock, "r")
    sched.announce(T, "r", [0], clock.now)
    sched.sync(T, "r", clock.now, want=4, park=True)
    assert not sched.is_waiting(T, "r")


def test_unknown_peer_must_register():
    sched, clock = make()
    with pytest.raises(UnknownPeer):
        sched.sync(T, "stranger", clock.now, want=1)


def test_remove_task_frees_sources_and_returns_waiters():
    sched, clock = make(pieces=2, seed_slots=1)
    join(sched, clock, "r1", "r2")
    mine(sched.sync(T, "r1", clock.now, want=1), "r1")
    sched.sync(T, "r2", clock.now, want=1, park=True)
    assert sched.remove_task(T) == ["r2"]
    assert sched.load(SEED) == (0, 1)
    assert not sched.has_task(T)


def test_spread_by_free_upload_capacity():
    sched, clock = make(pieces=1, seed_slots=0, piece_pace=0.5)  # 4 MiB pieces
    sched.peer_joined("slow", clock.now, slots=8, capacity=10e6)
    sched.peer_joined("fast", clock.now, slots=8, capacity=100e6)
    sched.announce(T, "slow", [0], clock.now)
    sched.announce(T, "fast", [0], clock.now)
    requesters = [f"r{i}" for i in range(12)]
    join(sched, clock, *requesters)
    got = [mine(sched.sync(T, r, clock.now, want=1), r) for r in requesters]
    sources = [batch[0].source if batch else None for batch in got]
    # A new transfer goes where it would get the most bandwidth; a source takes only as
    # many as it can move at a piece per half second each: 10 MB/s -> 1, 100 MB/s -> 11,
    # capped by its 8 slots.
    assert sources == ["fast"] * 8 + ["slow"] + [None] * 3


def test_uploads_per_source_follow_its_bandwidth():
    sched, clock = make(pieces=4, seed_slots=16, seeded=False, piece_pace=0.1)
    sched.remove_task(T)
    sched.add_task(T, 4, SEED, piece_size=1 << 20)
    sched.peer_joined("src", clock.now, slots=16, capacity=4e6)  # 4 MB/s, 1 MiB per 0.1 s: 1
    sched.announce(T, "src", [0, 1, 2, 3], clock.now)
    join(sched, clock, "r1", "r2")
    assert [a.source for a in mine(sched.sync(T, "r1", clock.now, want=4), "r1")] == ["src"]
    assert sched.load("src") == (1, 16)
    assert mine(sched.sync(T, "r2", clock.now, want=4), "r2") == []


def test_reported_load_counts_even_when_the_scheduler_did_not_assign_it():
    sched, clock = make(pieces=1, seed_slots=1)
    join(sched, clock, "a", "r", "busy", slots=2)
    sched.announce(T, "busy", [0], clock.now)
    sched.sync(T, "busy", clock.now, uploads=2)  # serving two uploads of its own
    assert mine(sched.sync(T, "r", clock.now, want=1), "r") == [Assignment(0, SEED)]


def test_busy_source_is_avoided_only_briefly():
    sched, clock = make(pieces=1, seed_slots=0, busy_backoff=1.0)
    join(sched, clock, "a", "r")
    sched.announce(T, "a", [0], clock.now)
    assert mine(sched.sync(T, "r", clock.now, want=1), "r") == [Assignment(0, "a")]
    refused = Failure(0, "a", FailureReason.BUSY)
    assert mine(sched.sync(T, "r", clock.now, failed=[refused], want=1), "r") == []
    clock.advance(1.1)
    assert mine(sched.sync(T, "r", clock.now, want=1), "r") == [Assignment(0, "a")]
    assert sched.state("a") is SourceState.ACTIVE


def test_degraded_source_becomes_a_last_resort_then_recovers():
    from supernode.scheduler import Timing

    sources = ["s0", "s1", "s2", "s3", "s4", "slow"]
    rounds = 5
    sched, clock = make(
        pieces=len(sources) * rounds, seed_slots=1, seeded=False, degraded_seconds=30, peer_timeout=100
    )
    join(sched, clock, *sources, "reporter", "r1", "r2")
    mib = 1 << 20
    piece = 0
    decisions = None
    for _ in range(rounds):
        for i, source in enumerate(sources):
            sched.announce(T, source, [piece], clock.now)  # the one piece on offer, from it
            (got,) = mine(sched.sync(T, "reporter", clock.now, want=1), "reporter")
            assert got == Assignment(piece, source)
            seconds = 2.0 if source == "slow" else 0.10 + 0.01 * i
            timing = Timing(piece, source, mib, seconds)
            decisions = sched.sync(T, "reporter", clock.now, finished=[piece], timings=[timing])
            if decisions.degraded:
                break
            piece += 1
    assert decisions.degraded == ["slow"]
    assert sched.state("slow") is SourceState.DEGRADED
    t2 = "sha256-" + "cd" * 32  # a second blob, held by the seed (one slot) and by "slow"
    sched.add_task(t2, 2, SEED)
    for p in (0, 1):
        sched.piece_seeded(t2, p, clock.now)
    sched.announce(t2, "slow", [0, 1], clock.now)
    assert sched.sync(t2, "r1", clock.now, want=1).assignments[(t2, "r1")][0].source == SEED
    assert sched.sync(t2, "r2", clock.now, want=1).assignments[(t2, "r2")][0].source == "slow"
    clock.advance(31)
    sched.expire(clock.now)
    assert sched.state("slow") is SourceState.ACTIVE


def test_timings_count_per_upload_the_source_was_serving():
    from supernode.scheduler import Timing

    sources = ["s0", "s1", "s2", "s3", "s4"]
    requesters = [f"r{i}" for i in range(8)]
    rounds = 6
    sched, clock = make(pieces=rounds * 6, seeded=False, peer_timeout=1000)
    join(sched, clock, *sources, "busy", *requesters, slots=8)
    piece = 0
    for _ in range(rounds):
        for source in sources:  # alone, one transfer at a time: 0.1 s per MiB
            sched.announce(T, source, [piece], clock.now)
            (a,) = mine(sched.sync(T, "r0", clock.now, want=1), "r0")
            assert a.source == source
            timing = Timing(piece, source, 1 << 20, 0.1)
            assert sched.sync(T, "r0", clock.now, finished=[piece], timings=[timing]).degraded == []
            piece += 1
        # "busy" serves eight at once, each 8x slower: that is load, not sickness.
        for r in requesters:
            sched.announce(T, r, list(range(piece)), clock.now)  # they want only the new one
        sched.announce(T, "busy", [piece], clock.now)
        for r in requesters:
            assert mine(sched.sync(T, r, clock.now, want=1), r) == [Assignment(piece, "busy")]
        for r in requesters:
            timing = Timing(piece, "busy", 1 << 20, 0.8)
            assert sched.sync(T, r, clock.now, finished=[piece], timings=[timing]).degraded == []
        piece += 1
    assert sched.state("busy") is SourceState.ACTIVE


def test_speed_tracker_uses_the_others_spread():
    from supernode.scheduler.speed import SpeedTracker

    speed = SpeedTracker(min_samples=1, min_sources=4)
    for i in range(5):
        speed.report(f"ok{i}", 1 << 20, 1.0 + 0.05 * i)
    speed.report("odd", 1 << 20, 1.3)  # a little slow: within the others' spread + ratio
    assert not speed.degraded("odd")
    speed.report("bad", 1 << 20, 5.0)
    assert speed.degraded("bad") and not speed.degraded("ok0")
    speed.reset("bad")
    assert not speed.degraded("bad")


def test_a_requester_silent_with_transfers_in_flight_gives_them_back():
    sched, clock = make(pieces=2, seed_slots=2, flight_silence=5, peer_timeout=100)
    join(sched, clock, "crashed", "alive")
    assert len(mine(sched.sync(T, "crashed", clock.now, want=2), "crashed")) == 2
    assert len(mine(sched.sync(T, "alive", clock.now, want=2, park=True), "alive")) == 0
    clock.advance(4)
    sched.sync(T, "alive", clock.now, want=2, park=True)
    assert sched.expire(clock.now).assignments == {}
    clock.advance(2)  # "crashed" has not synced for 6 s with two transfers under way
    decisions = sched.expire(clock.now)
    assert sched.in_flight(T, "crashed") == {}
    # The freed seed slots went on, within the share: two seed slots, two downloaders.
    assert len(mine(decisions, "alive")) == 1
    assert sched.knows_peer("crashed")  # it is only dropped at peer_timeout


def test_fair_share_leaves_room_for_a_starved_requester():
    sched, clock = make(pieces=8, seed_slots=0)
    sources = [f"s{i}" for i in range(4)]
    join(sched, clock, *sources, slots=1)
    for source in sources:
        sched.announce(T, source, list(range(8)), clock.now)
    join(sched, clock, "greedy", "starved")
    sched.sync(T, "starved", clock.now)  # both are members of the task
    # supply 4 (one upload each), two requesters still downloading: a share of two each
    assert len(mine(sched.sync(T, "greedy", clock.now, want=4), "greedy")) == 2
    assert len(mine(sched.sync(T, "starved", clock.now, want=4), "starved")) == 2


def test_a_slot_freed_on_one_task_wakes_a_peer_parked_on_another():
    sched, clock = make(pieces=1, seed_slots=1)  # the seed serves one upload at a time
    other = "sha256-" + "ef" * 32  # another layer of the same image, same seed
    sched.add_task(other, 1, SEED, piece_size=4 << 20)
    sched.piece_seeded(other, 0, clock.now)
    join(sched, clock, "a", "b")
    assert mine(sched.sync(T, "a", clock.now, want=1), "a") == [Assignment(0, SEED)]
    assert sched.sync(other, "b", clock.now, want=1, park=True).assignments == {}
    decisions = sched.sync(T, "a", clock.now, finished=[0])  # the seed's slot comes back
    assert decisions.assignments == {(other, "b"): [Assignment(0, SEED)]}
