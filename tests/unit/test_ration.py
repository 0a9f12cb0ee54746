"""The seed's ration: a few copies of each piece, then only where peers lack it."""

import pytest

from supernode.ration import SeedRation
from swarmpull.edges.transport import Ration

SEND, ELSEWHERE, LATER = Ration.SEND, Ration.ELSEWHERE, Ration.LATER
PIECE = 64 * 1024


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def ration_for(copies, holders, clock=None, grace=1.0, small=16 * 1024):
    def holders_of(task, piece, requester=None, now=0.0, limit=0):
        return holders.get((task, piece), 0)

    return SeedRation(copies, holders_of, clock or Clock(), grace, small)


def test_each_piece_goes_out_copies_times_then_only_while_few_peers_hold_it():
    holders, clock = {("t", 0): 0}, Clock()
    ration = ration_for(2, holders, clock)
    assert ration.decide("t", 0, PIECE) is SEND and ration.decide("t", 0, PIECE) is SEND
    # Two copies just went out: nobody could have reported them yet, so no third one,
    # however many ask at once; they are told to ask again, not that the seed lacks it.
    assert ration.decide("t", 0, PIECE) is LATER
    assert ration.decide("t", 0, PIECE) is LATER
    holders[("t", 0)] = 2
    assert ration.decide("t", 0, PIECE) is ELSEWHERE  # peers hold it: they serve it
    clock.now += 1.5
    assert ration.decide("t", 0, PIECE) is ELSEWHERE
    holders[("t", 0)] = 1  # one holder left
    assert ration.decide("t", 0, PIECE) is SEND  # long after the last copy: the count is believed
    assert ration.decide("t", 0, PIECE) is LATER  # and the next copy waits for its report again
    clock.now += 1.5
    assert ration.decide("t", 0, PIECE) is SEND
    # counted per task and piece
    assert ration.decide("t", 1, PIECE) is SEND and ration.decide("other", 0, PIECE) is SEND


def test_copies_sent_long_ago_and_never_reported_go_out_again():
    clock = Clock()
    ration = ration_for(1, {}, clock, grace=2.0)
    assert ration.decide("t", 0, PIECE) is SEND
    clock.now += 1.9
    assert ration.decide("t", 0, PIECE) is LATER
    clock.now += 0.2  # its holder never reported it (it left, or lost it): send again
    assert ration.decide("t", 0, PIECE) is SEND


def test_a_small_piece_always_goes_out():
    # An image's config blob: one piece, a few hundred bytes, needed by every node.
    ration = ration_for(1, {("config", 0): 50})
    assert all(ration.decide("config", 0, 573) is SEND for _ in range(10))
    assert ration.decide("layer", 0, PIECE) is SEND
    assert ration.decide("layer", 0, PIECE) is LATER
    ration = ration_for(1, {}, small=1024)  # "under": one of exactly 1024 bytes is rationed
    assert ration.decide("t", 0, 1024) is SEND and ration.decide("t", 0, 1024) is LATER


def test_the_seed_sends_every_piece_at_least_once():
    with pytest.raises(ValueError):
        ration_for(0, {})


def test_a_blob_the_seed_dropped_is_counted_afresh():
    ration = ration_for(1, {("t", 0): 1})  # one peer holds the piece
    assert ration.decide("t", 0, PIECE) is SEND
    assert ration.decide("t", 0, PIECE) is ELSEWHERE
    ration.forget("t")  # evicted from the seed's cache: whatever it holds next is a new copy
    assert ration.decide("t", 0, PIECE) is SEND
    ration.forget("never-seen")  # nothing to forget is no error


def test_a_copy_that_did_not_go_out_whole_is_not_counted():
    clock = Clock()
    ration = ration_for(1, {}, clock)
    assert ration.decide("t", 0, PIECE, take=False) is SEND  # a look counts nothing
    assert ration.decide("t", 0, PIECE) is SEND
    ration.give_back("t", 0, PIECE)  # its requester hung up: asking and leaving spends no copy
    assert ration.decide("t", 0, PIECE) is SEND  # before: LATER for everyone for a second
    assert ration.decide("t", 0, PIECE) is LATER
    ration.give_back("config", 0, 573)  # a small piece is never counted, nor given back
    assert ration.decide("config", 0, 573) is SEND


def test_holders_are_counted_for_the_requester_who_gets_a_piece_past_the_ration_once():
    asked = []

    def holders_of(task, piece, requester, now, limit):
        assert limit == 2  # the ration asks "at least copies?"
        asked.append((requester, now))
        return 0 if requester in ("starved", "greedy") else 2

    clock = Clock()
    ration = SeedRation(2, holders_of, clock, 1.0)
    assert ration.decide("t", 0, PIECE) is SEND and ration.decide("t", 0, PIECE) is SEND
    clock.now += 1.5
    assert ration.decide("t", 0, PIECE, requester="fed") is ELSEWHERE
    assert asked == [("fed", clock.now)]
    # The holders it has are none for this one (it dropped them): one more copy goes out.
    assert ration.decide("t", 0, PIECE, requester="starved") is SEND
    assert ration.decide("t", 0, PIECE, requester="greedy") is LATER  # one per grace
    clock.now += 1.5
    assert ration.decide("t", 0, PIECE, requester="greedy") is SEND
    clock.now += 1.5
    # Dropping every parent again does not buy it a second copy; one not sent whole, does.
    assert ration.decide("t", 0, PIECE, requester="greedy") is ELSEWHERE
    ration.give_back("t", 0, PIECE, "starved")
    assert ration.decide("t", 0, PIECE, requester="starved") is SEND
    ration.forget("t")
    for _ in range(2):  # a blob held again is counted afresh
        assert ration.decide("t", 0, PIECE, requester="greedy") is SEND
