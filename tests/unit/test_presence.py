"""Where peers are reached: a registration's address, handed out with the parents."""

from __future__ import annotations

from supernode.config import SupernodeConfig
from supernode.metrics import SupernodeMetrics
from supernode.presence import Presence
from supernode.scheduler import Parent, Scheduler
from swarmpull.core.protocol import ParentInfo, PeerRegistration


class NoCluster:
    """Presence reads the cluster only in ``ensure``, not called here."""


def test_a_peer_registering_where_it_is_known_keeps_its_address():
    # After a takeover a peer is made known from the cluster (its first call there an
    # open or a report), then registers itself: its address was forgotten with the
    # earlier registration's departure, and it stayed a parent nobody was given
    # (the takeover test stalled on it about one run in six).
    scheduler = Scheduler()
    scheduler.add_seed("seed")
    presence = Presence(
        SupernodeConfig(), scheduler, NoCluster(), "http://seed", lambda: 1.0, SupernodeMetrics()
    )
    for address in ("http://127.0.0.1:1234", "http://127.0.0.1:1234", "http://127.0.0.1:5678"):
        presence.join(PeerRegistration("a", address))
        assert presence.address("a") == address
        assert presence.reach([Parent("a", False), Parent("seed", True)]) == [
            ParentInfo("a", address),
            ParentInfo("seed", "http://seed", True),
        ]
    presence.join(PeerRegistration("a", None))  # it no longer serves
    assert presence.reach([Parent("a", False)]) == []
