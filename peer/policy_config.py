"""The tuning of a peer's piece choices (``peer.policy``), each value with the reason for it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Tuning of a peer's piece choices; times in seconds of the clock passed in."""

    max_inflight: int = 8
    """Most transfers of one blob under way at once (the node's download slots bound all
    blobs)."""
    per_parent: int = 3
    """Most transfers from one parent at once, when its pieces are quick (below)."""
    pipeline_below: float = 0.1
    """Seconds: a parent gets more than one transfer at once only while a piece from it is
    expected sooner than this. Pipelining hides the round trip and the hash between two
    pieces, which matters only for quick ones; a slow piece shared by parallel transfers
    from one parent arrives later, and is shared onward later, than one after another."""
    spare_share: float = 0.8
    """A parent whose one transfer brings at least this share of our link divided among
    our parents has upload to spare: it gets a second transfer at once while its pieces
    take under ``spare_below`` and our transfers are expected to bring less than
    ``spare_until`` of our link. A parent shares its upload per transfer, and with one
    transfer a parent a node is fed by how crowded its parents are: simulated (``--trace``),
    1000 nodes x 1 GiB in 4 MiB pieces at 1 Gbit/s, nodes whose parents served 4.5 to 5
    children on average used 91-93 % of their link against 99-100 % behind parents of 3
    to 3.5, and a source of 3 children used 78 % of its upload (p99 1.25x the bound;
    1.19-1.20x with this)."""
    spare_until: float = 0.95
    """Share of our link our transfers must be expected to bring before no parent gets a
    second transfer for spare upload (``spare_share``)."""
    spare_below: float = 0.5
    """Seconds: a slower piece is not split with a second transfer (``pipeline_below``)."""
    headroom: float = 1.25
    """Transfers are added while the rates they are expected to bring (each parent's
    measured rate per transfer) sum to less than this times the download rate: few, fast
    transfers when parents are fast (a piece is ready to share sooner), more when they
    are loaded."""
    first_streams: int = 2
    """Before a parent's rate is measured, a transfer is expected to bring the download
    rate divided by this."""
    endgame: int = 4
    """With at most this many pieces missing, all in flight, slow ones get a second parent."""
    starve_after: float = 0.5
    """Seconds with room for a transfer and nothing to fetch before asking for parents."""
    idle_after: float = 2.0
    """Seconds a peer parent may hold nothing we lack before we let it go for another. A
    parent as far along as we are often holds nothing new for a second, then has pieces
    again; letting it go sooner only changes parents (each a new connection, over TLS a
    handshake, and calls for parents). Default surge, simulated: 1 s changed parents 1.8
    times as often as 2 s (5.6 against 3.1 a node a second) for the same p99. Real: at 1 s
    a 100-node surge over TLS on two cores stalled in handshakes; at 2 s it completes (p99
    1.63x); longer (3, 5 s) kept idle parents too long, p99 1.68-1.75x against 1.59x."""
    wake_interval: float = 1.0
    """Seconds between looks at the parents while a download waits on them (that is when
    starving and idle parents are noticed)."""
    idle_pieces: float = 8.0
    """On a fast link ``idle_after`` and ``wake_interval`` shrink to this many piece times
    (the piece size over the download rate), never below ``quick_floor``: at 1 Gbit/s a
    4 MiB piece takes 34 ms, and a parent kept 2 s with nothing new wastes the time of
    sixty pieces. Simulated, 1000 nodes x 1 GiB in 4 MiB pieces at 1 Gbit/s: p99 1.41x
    with 2 s, 1.25x with this (calls 3,058 -> 4,558). Slow links (the default surge:
    64 KiB at 100 kB/s) keep the seconds above."""
    quick_floor: float = 0.25
    """Seconds: the shortest ``idle_after`` and ``wake_interval`` that piece times give."""
    min_deadline: float = 2.0
    """A transfer always gets this long."""
    slack: float = 4.0
    """A transfer gets this many times the time its expected rate needs."""
    bad_after: int = 2
    """Failed transfers after which a parent is dropped (a corrupt piece, or one measured
    far too slow for its deadline: at once)."""
    busy_backoff: float = 1.0
    """Seconds a parent that refused (all upload slots busy) is not asked again."""
    refused_after: float = 20.0
    """Seconds a peer parent may refuse every piece we ask of it ("busy", or "not held"
    for pieces its map shows), with none from it since and no pause as long between two
    refusals, before it is dropped as bad. An
    honest source's slots turn over in a few piece times; one that holds what we lack
    and never serves it (a node that took the seed's copies and answers only "busy", or
    only "not held" while its maps say otherwise) would otherwise keep us, and the
    seed's ration, waiting on it for ever (the supernode keeps it from us, and the seed
    no longer counts it as a holder for us)."""
    map_pause: float = 0.25
    """Seconds before asking again for the map of a parent that still offers pieces we
    lack and are not fetching: its news can wait. (A map is a long poll answered at each
    new piece: a parent receiving 20 pieces a second answered each of its children 20
    times a second, most of a node's CPU in a 40-node surge at 5 MB/s.)"""

    def __post_init__(self) -> None:
        for name in ("max_inflight", "per_parent", "endgame", "bad_after"):
            if getattr(self, name) < 1:
                raise ValueError(f"PolicyConfig.{name} must be at least 1")
        if self.idle_pieces <= 0 or self.quick_floor <= 0:
            raise ValueError("PolicyConfig.idle_pieces and quick_floor must be positive")
        for name in ("map_pause", "spare_share", "spare_until", "spare_below"):
            if getattr(self, name) < 0:
                raise ValueError(f"PolicyConfig.{name} must not be negative")
