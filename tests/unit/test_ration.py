"""The seed's ration: a few copies of each piece, then only where peers lack it."""

import pytest

from supernode.ration import SeedRation


def test_each_piece_goes_out_copies_times_then_only_while_few_peers_hold_it():
    holders = {("t", 0): 0}
    ration = SeedRation(2, lambda task, piece: holders.get((task, piece), 0))
    assert ration.allow("t", 0) and ration.allow("t", 0)
    # Two copies out, nobody reported holding it yet (reports lag): still served.
    assert ration.allow("t", 0)
    holders[("t", 0)] = 2
    assert not ration.allow("t", 0)  # peers hold it: they serve it
    holders[("t", 0)] = 1  # one holder left
    assert ration.allow("t", 0)
    assert ration.allow("t", 1) and ration.allow("other", 0)  # counted per task and piece


def test_the_seed_sends_every_piece_at_least_once():
    with pytest.raises(ValueError):
        SeedRation(0, lambda task, piece: 0)


def test_a_blob_the_seed_dropped_is_counted_afresh():
    ration = SeedRation(1, lambda task, piece: 1)  # one peer holds every piece
    assert ration.allow("t", 0)
    assert not ration.allow("t", 0)
    ration.forget("t")  # evicted from the seed's cache: whatever it holds next is a new copy
    assert ration.allow("t", 0)
    ration.forget("never-seen")  # nothing to forget is no error
