"""The peer's piece choices fed events directly: parents' maps in, transfers out."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer.policy import PiecePolicy
from peer.policy_config import PolicyConfig
from swarmpull.core.bitfield import bits, full, of
from swarmpull.core.failures import FailureReason

PIECE = 4 << 20
NOW = 100.0


class View:
    def __init__(self, pieces=()) -> None:
        self.bits = of(list(pieces))


def policy(count=8, rate=100e6, **config) -> PiecePolicy:
    return PiecePolicy(count, PIECE, PolicyConfig(**config), random.Random(5), download_rate=rate)


def test_rarest_among_the_parents_first():
    p = policy(count=4, max_inflight=1, per_parent=1)
    p.set_parents([("a", False, View([0, 1, 2])), ("b", False, View([0, 1])), ("c", False, View([0]))])
    assert p.choose(NOW, 1) == [(2, "a")]  # piece 2 is held by one parent only


def test_a_piece_a_reader_waits_on_comes_before_the_rarest_from_a_peer_if_one_holds_it():
    p = policy(count=4, max_inflight=1, per_parent=1)
    p.set_parents([("a", False, View([0, 1, 2])), ("b", False, View([0, 1])), ("seed", True, View(range(4)))])
    (pick,) = p.choose(NOW, 1, awaited=of([1]))
    assert pick in [(1, "a"), (1, "b")]  # unawaited: piece 3, which only the seed holds
    q = policy(count=4, max_inflight=1, per_parent=1)
    q.set_parents([("a", False, View([0, 1])), ("seed", True, View(range(4)))])
    assert q.choose(NOW, 1, awaited=of([3])) == [(3, "seed")]  # only the seed holds it
    r = policy(count=4, max_inflight=1, per_parent=1)
    r.set_parents([("a", False, View([0, 1, 2]))])
    assert r.choose(NOW, 1, awaited=of([3])) != []  # held by nobody: the others meanwhile


def test_no_parents_no_choice_even_for_a_waiting_reader():
    p = policy(count=4)
    assert p.choose(NOW, 4, awaited=of([1])) == []
    assert p.needs_parents(NOW)


def test_the_seed_first_for_what_only_it_holds_then_last():
    p = policy(count=4, per_parent=1, headroom=10.0)
    p.set_parents([("a", False, View([0, 1])), ("seed", True, View([0, 1, 2, 3]))])
    picks = p.choose(NOW, 8)
    assert picks[0][1] == "seed" and picks[0][0] in (2, 3)  # only the seed holds 2 and 3
    peer_picks = [piece for piece, parent in picks if parent == "a"]
    assert len(peer_picks) == 1 and peer_picks[0] in (0, 1)


def test_only_pieces_whose_sha256_is_known_are_chosen():
    p = policy(count=4, per_parent=4, headroom=10.0)
    p.set_parents([("a", False, View([0, 1, 2, 3]))])
    assert sorted(piece for piece, _ in p.choose(NOW, 8, known=of([1, 3]))) == [1, 3]


def test_transfers_are_added_while_the_expected_rates_fall_short():
    """A fast parent gets a few transfers; a slow one, measured, gets more company."""
    p = policy(count=32, per_parent=8, max_inflight=8, headroom=1.0, first_streams=2, pipeline_below=1.0)
    p.set_parents([("a", False, View(range(32)))])
    assert len(p.choose(NOW, 8)) == 2  # unmeasured: each expected to bring half the link
    for piece in list(p.inflight):
        p.finished(piece, "a", PIECE, PIECE / 10e6, NOW)  # measured: 10 MB/s per transfer
    assert len(p.choose(NOW, 8)) == 8  # 100 MB/s wanted: as many as the caps allow


def test_a_parent_whose_pieces_are_slow_sends_them_one_after_another():
    """Two slow pieces side by side from one parent both arrive late; one after the other,
    the first is ready (and shared onward) twice as soon."""
    p = policy(count=32, per_parent=4, max_inflight=8, headroom=10.0, pipeline_below=0.1)
    p.set_parents([("slow", False, View(range(32))), ("quick", False, View(range(32)))])
    p.parents["slow"].rate = 10e6  # 4 MiB in 0.42 s
    p.parents["quick"].rate = 100e6  # in 0.04 s: pipelined, the gaps between pieces hidden
    by_parent = [parent for _, parent in p.choose(NOW, 8)]
    assert by_parent.count("slow") == 1 and by_parent.count("quick") == 4


def test_a_parent_with_upload_to_spare_gets_a_second_transfer_while_our_link_is_underfed():
    """A parent shares its upload per transfer: one crowded with children brings less than
    its share of our link, and one with upload to spare makes up for it with a second
    transfer, but only while our link is not full, and never for a slow piece."""

    def by_parent(rates: dict[str, float], link: float = 125e6) -> dict[str, int]:
        p = policy(count=64, rate=link, per_parent=3, max_inflight=8, headroom=1.25, pipeline_below=0.1)
        p.set_parents([(name, False, View(range(64))) for name in rates])
        for name, rate in rates.items():
            p.parents[name].rate = rate
        picked = [parent for _, parent in p.choose(NOW, 8)]
        return {name: picked.count(name) for name in rates}

    # 4 MiB at 31 MB/s: 0.14 s, not quick enough to pipeline (pipeline_below).
    crowded = {"a": 21e6, "b": 21e6, "c": 21e6, "roomy": 31e6}
    assert by_parent(crowded) == {"a": 1, "b": 1, "c": 1, "roomy": 2}
    fed = {"a": 31e6, "b": 31e6, "c": 31e6, "d": 31e6}  # 124 of 125 MB/s expected: full
    assert by_parent(fed) == dict.fromkeys(fed, 1)
    slow = {"a": 1.5e6, "b": 1.5e6, "c": 1.5e6, "roomy": 2.5e6}  # its pieces take 1.7 s
    assert by_parent(slow, link=10e6) == dict.fromkeys(slow, 1)


def test_a_parent_offers_what_we_lack_and_are_not_fetching():
    """``offers``: whether a parent's news can wait (``SwarmFetch`` pauses its map polls)."""
    p = policy(count=4, per_parent=2, max_inflight=2, headroom=10.0)
    a = View([0, 1])
    p.set_parents([("a", False, a)])
    assert p.offers("a") and not p.offers("gone")
    assert sorted(piece for piece, _ in p.choose(NOW, 2)) == [0, 1]
    assert not p.offers("a")  # all it holds is in flight
    for piece in (0, 1):
        p.finished(piece, "a", PIECE, 0.1, NOW)
    assert not p.offers("a")  # and now ours
    a.bits = of([0, 1, 3])
    assert p.offers("a")


def test_a_failing_parent_is_dropped_and_reported():
    p = policy(count=8, bad_after=2, per_parent=1)
    p.set_parents([("a", False, View(range(8))), ("b", False, View(range(8)))])
    (piece, _), *_ = [x for x in p.choose(NOW, 8) if x[1] == "a"]
    p.failed(piece, "a", FailureReason.TIMEOUT, NOW)
    assert piece not in p.inflight and not p.needs_parents(NOW)
    again = [x for x in p.choose(NOW, 8) if x[1] == "a"]
    p.failed(again[0][0], "a", FailureReason.TIMEOUT, NOW)
    assert p.needs_parents(NOW)
    reports, _, bad = p.take_report(NOW)
    assert bad == ["a"] and reports["a"].failures == 2 and reports["a"].reason is FailureReason.TIMEOUT
    assert all(parent != "a" for _, parent in p.choose(NOW, 8))
    p.set_parents([("a", False, View(range(8)))])  # an answer that crossed our report
    assert "a" not in p.parents or p.parents["a"].leaving is False


def test_one_corrupt_piece_is_enough():
    p = policy(count=4)
    p.set_parents([("liar", False, View(range(4)))])
    piece, _ = p.choose(NOW, 1)[0]
    p.failed(piece, "liar", FailureReason.CORRUPT, NOW)
    _, _, bad = p.take_report(NOW)
    assert bad == ["liar"] and "liar" not in p.parents


def test_busy_backs_off_and_missing_waits_for_the_next_map():
    p = policy(count=2, per_parent=2, busy_backoff=1.0)
    view = View([0, 1])
    p.set_parents([("a", False, view)])
    picks = p.choose(NOW, 2)
    for piece, _ in picks:
        p.failed(piece, "a", FailureReason.BUSY, NOW)
    assert p.choose(NOW + 0.5, 2) == []
    picks = p.choose(NOW + 1.5, 2)
    assert len(picks) == 2
    p.failed(picks[0][0], "a", FailureReason.MISSING, NOW + 1.5)
    assert all(piece != picks[0][0] for piece, _ in p.choose(NOW + 1.5, 2))
    p.map_changed("a")
    assert p.choose(NOW + 1.5, 2) == [(picks[0][0], "a")]


@pytest.mark.parametrize("refusal", [FailureReason.BUSY, FailureReason.MISSING])
def test_a_peer_parent_that_refuses_everything_for_long_is_dropped_as_bad_the_seed_never(refusal):
    # "Not held" for pieces its maps keep showing is a refusal too.
    p = policy(count=4, per_parent=1, busy_backoff=1.0, refused_after=20.0)
    p.set_parents(
        [("a", False, View(range(4))), ("b", False, View(range(4))), ("seed", True, View(range(4)))]
    )
    t, asked = NOW, set()
    while t < NOW + 30:
        for piece, parent in p.choose(t, 3):
            asked.add(parent)
            if parent == "b" and t > NOW + 15:
                p.finished(piece, parent, PIECE, 0.1, t)  # b serves after a while
            else:
                p.failed(piece, parent, refusal, t)
        for parent in ("a", "b", "seed"):
            p.map_changed(parent)  # its next map shows it all again
        t += 1.1
    _, _, bad = p.take_report(t)
    assert asked == {"a", "b", "seed"}
    assert bad == ["a"]  # refused all it was asked for 20 s; b served once in time
    assert "a" not in p.parents and {"b", "seed"} <= set(p.parents)


def test_a_refusing_parent_let_go_and_given_back_is_remembered():
    # One that answers "not held" looks idle (its pieces hidden until its next map), is
    # let go and given back by the supernode: its refusals still add up.
    p = policy(count=4, per_parent=1, refused_after=20.0)
    bad = []
    for t in (NOW, NOW + 11, NOW + 22):
        p.set_parents([("a", False, View(range(4)))])
        for piece, parent in p.choose(t, 1):
            p.failed(piece, parent, FailureReason.MISSING, t)
        bad.append(p.take_report(t)[2])
        p.set_parents([])  # let go
    assert bad == [[], [], ["a"]]  # bad at the third refusal, 22 s after the first


def test_a_refusal_long_ago_does_not_count_toward_a_new_run():
    p = policy(count=4, per_parent=1, refused_after=20.0)
    p.set_parents([("a", False, View(range(4)))])
    for t in (NOW, NOW + 60, NOW + 61):  # busy once, then once a minute later: ordinary
        for piece, parent in p.choose(t, 1):
            p.failed(piece, parent, FailureReason.BUSY, t)
    assert p.take_report(NOW + 61)[2] == [] and "a" in p.parents


def test_endgame_asks_a_second_parent_and_the_first_copy_wins():
    p = policy(count=2, endgame=2, per_parent=2, rate=10e6, first_streams=1)
    p.set_parents([("slow", False, View([0, 1])), ("fast", False, View([0, 1]))])
    first = p.choose(NOW, 2)
    assert {piece for piece, _ in first} == {0, 1}
    assert p.choose(NOW + 0.01, 2) == []  # in flight for less than expected
    later = p.choose(NOW + 5.0, 2)  # far longer than 4 MiB at 10 MB/s
    assert {piece for piece, _ in later} == {0, 1}
    twin = later[0]
    cancelled = p.finished(twin[0], twin[1], PIECE, 0.1, NOW + 5.1)
    assert len(cancelled) == 1 and cancelled[0] != twin[1]


def test_starving_asks_for_parents_and_lets_idle_ones_go():
    p = policy(count=4, starve_after=0.5, idle_after=1.0)
    p.set_parents([("empty", False, View([])), ("seed", True, View([]))])
    assert p.choose(NOW, 4) == [] and not p.needs_parents(NOW)
    assert p.choose(NOW + 0.6, 4) == [] and p.needs_parents(NOW + 0.6)
    _, dropped, _ = p.take_report(NOW + 1.1)
    assert dropped == ["empty"]  # the seed is never dropped as idle


def test_how_long_an_idle_parent_is_kept_follows_the_piece_time():
    """A 4 MiB piece takes 42 ms at 100 MB/s: an idle parent goes after 8 of them, not
    after 2 s; at 1 MB/s a piece takes 4 s and the 2 s stand; a download waiting behind
    older ones on its link keeps its parents (they cost nothing while it waits)."""

    def kept(rate: float, ahead: float = 0.0) -> tuple[bool, bool, bool]:
        p = policy(count=4, rate=rate, idle_after=2.0, starve_after=60.0)
        p.set_parents([("a", False, View([0, 1, 2, 3])), ("empty", False, View([]))])
        p.choose(NOW, 1, ahead=ahead)
        return p.needs_parents(NOW + 0.3), p.needs_parents(NOW + 0.4), p.needs_parents(NOW + 2.0)

    assert kept(100e6) == (False, True, True)
    assert kept(1e6) == (False, False, True)
    assert kept(100e6, ahead=200e6) == (False, False, False)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.integers(0, (1 << 10) - 1), min_size=1, max_size=5),
    st.lists(
        st.tuples(
            st.sampled_from(["done", "fail", "choose", "map", "parents", "report"]), st.integers(0, 50)
        ),
        max_size=60,
    ),
)
def test_choices_stay_within_what_parents_hold_and_the_caps(maps, steps):
    config = PolicyConfig(max_inflight=6, per_parent=2, headroom=10.0)
    p = PiecePolicy(10, PIECE, config, random.Random(1), download_rate=100e6)
    views = {f"p{i}": View(bits(m)) for i, m in enumerate(maps)}
    p.set_parents([(name, i == 0, view) for i, (name, view) in enumerate(views.items())])
    now = NOW
    for kind, value in steps:
        now += 0.1
        if kind == "choose":
            for piece, parent in p.choose(now, 6):
                assert views[parent].bits >> piece & 1  # it holds it
                assert not p.have >> piece & 1  # we do not
        elif kind == "map":
            name = list(views)[value % len(views)]
            views[name].bits |= 1 << (value % 10)
            p.map_changed(name)
        elif kind == "parents":  # an answer names some of them (the others leave)
            named = [(name, i == 0, view) for i, (name, view) in enumerate(views.items()) if value >> i & 1]
            p.set_parents(named)
        elif kind == "report":
            p.take_report(now + value)  # idle parents let go
        elif p.inflight:
            piece = list(p.inflight)[value % len(p.inflight)]
            parent = next(iter(p.inflight[piece]))
            if kind == "done":
                p.finished(piece, parent, PIECE, 0.05, now)
            else:
                p.failed(piece, parent, FailureReason.TIMEOUT, now)
        assert p.transfers == sum(len(c) for c in p.inflight.values()) <= config.max_inflight
        for link in p.parents.values():
            assert link.inflight <= config.per_parent
            assert link.inflight == sum(link.id in c for c in p.inflight.values())
        # every copy's parent is still known, so the rates it brings are summed per parent
        copies = [p.parents[parent] for c in p.inflight.values() for parent in c]
        assert p.projected() == pytest.approx(sum(link.rate or 50e6 for link in copies))
        assert p.have | full(10) == full(10)


def test_a_parent_measured_slow_earns_a_longer_deadline_within_a_bound():
    p = policy(count=8, rate=1e6, max_inflight=8, min_deadline=0.1)  # a 1 MB/s link
    p.set_parents([("loaded", False, View(range(8))), ("crawl", False, View(range(8)))])
    share = 1e6 / 8  # of the link, as slow as any
    assert p.deadline("crawl", PIECE) == 4.0 * PIECE / share  # unmeasured: slack x that share
    for piece, parent in p.choose(NOW, 2):
        seconds = {"loaded": PIECE / (share / 2), "crawl": PIECE / 10e3}[parent]  # 10 kB/s
        p.finished(piece, parent, PIECE, seconds, NOW + seconds)
    assert p.deadline("loaded", PIECE) == pytest.approx(4.0 * PIECE / (share / 2))  # its own rate
    assert p.deadline("crawl", PIECE) == pytest.approx(4.0 * PIECE / (share / 4))  # not 1,600 s


def test_a_short_last_piece_sets_no_rate():
    p = PiecePolicy(3, PIECE, PolicyConfig(), random.Random(5), download_rate=1e6)
    p.set_parents([("a", False, View([0, 1, 2]))])
    picks = p.choose(NOW, 3)
    assert (2, "a") in picks
    p.finished(2, "a", 43, 0.5, NOW + 0.5)  # 43 bytes in 0.5 s: its latency, not 86 B/s
    assert p.parents["a"].rate == 0  # still unmeasured
    p.finished(0, "a", PIECE, 2.0, NOW + 2.5)
    assert p.parents["a"].rate == PIECE / 2.0


def test_asks_for_parents_slow_down_while_answers_bring_nothing():
    p = policy(count=4, rate=1e6, starve_after=0.5)  # a slow link: idle parents kept 2 s
    p.set_parents([("empty", False, View())])
    now = NOW
    waits = []
    for _ in range(5):
        assert p.choose(now, 4) == []  # nothing to fetch: starving from now
        start = now
        while not p.needs_parents(now):
            now += 0.25
        waits.append(now - start)
        p.set_parents([("empty", False, View())])  # the answer: parents that hold nothing
    assert waits == [0.5, 1.0, 2.0, 4.0, 4.0]  # doubling, at most 8 times starve_after
    p.set_parents([("full", False, View(range(4)))])
    ((piece, parent),) = p.choose(now, 1)
    p.finished(piece, parent, PIECE, 1.0, now + 1)  # a piece: patience over
    p.set_parents([("empty", False, View())])
    now += 1
    assert p.choose(now, 4) == [] and not p.needs_parents(now + 0.25) and p.needs_parents(now + 0.5)
