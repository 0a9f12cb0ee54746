"""The node's link shared among its downloads, oldest first (foreground before background)."""

import random

from peer.policy import PiecePolicy
from peer.policy_config import PolicyConfig
from peer.share import LinkShare
from swarmpull.core.rates import Priority


class Download:
    def __init__(self, share: LinkShare, priority: Priority, rate: float) -> None:
        self.rate, self.woken = rate, 0
        share.join(self, priority, lambda: self.rate, self.wake)

    def wake(self) -> None:
        self.woken += 1


def test_a_download_counts_what_those_before_it_use():
    share = LinkShare()
    first = Download(share, Priority.FOREGROUND, 30e6)
    background = Download(share, Priority.BACKGROUND, 5e6)
    second = Download(share, Priority.FOREGROUND, 20e6)
    assert share.ahead(first) == 0.0
    assert share.ahead(second) == 30e6  # the older foreground download, not the background one
    assert share.ahead(background) == 50e6  # behind every foreground download, however older
    assert share.ahead(object()) == 0.0  # not (or no longer) a member


def test_room_freed_wakes_only_the_downloads_behind():
    share = LinkShare()
    first, second, third = (Download(share, Priority.FOREGROUND, 1.0) for _ in range(3))
    share.changed(second)
    assert (first.woken, second.woken, third.woken) == (0, 0, 1)
    share.leave(first)
    assert (first.woken, second.woken, third.woken) == (0, 1, 2)
    assert first not in share and share.ahead(third) == 1.0


def test_the_policy_leaves_to_older_downloads_what_they_use():
    class View:
        bits = (1 << 16) - 1

    def picks(ahead: float) -> int:
        config = PolicyConfig(headroom=1.0, first_streams=4, pipeline_below=10.0)
        policy = PiecePolicy(16, 1 << 20, config, random.Random(1), download_rate=100e6)
        policy.set_parents([(f"p{i}", False, View()) for i in range(8)])
        return len(policy.choose(0.0, 8, ahead=ahead))

    assert picks(0.0) == 4  # each transfer expected to bring a quarter of the link
    assert picks(75e6) == 1  # three quarters taken by older downloads


def test_a_download_waiting_behind_older_ones_is_not_starving():
    """Nothing chosen because the link is full is not "nobody to get pieces from": it
    must not ask the supernode for other parents (at 1000 nodes in 4 layers that tripled
    the supernode's calls)."""

    class View:
        bits = (1 << 16) - 1

    policy = PiecePolicy(16, 1 << 20, PolicyConfig(starve_after=0.5), random.Random(1), download_rate=100e6)
    policy.set_parents([("p", False, View())])
    assert policy.choose(0.0, 8, ahead=200e6) == []  # older downloads fill the link
    assert not policy.needs_parents(5.0)
    assert policy.choose(5.0, 8) != []  # the link free again: it fetches from its parent
