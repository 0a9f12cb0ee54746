"""A peer's decisions for one blob, sans-IO: which piece to fetch from which parent, when
to give up on a transfer, when to ask the supernode for other parents.

The peer daemon (``peer.download``) and the load-test simulator both drive this object,
so the simulator runs the decisions production runs. Time arrives as ``now``; parents'
piece maps are read through ``MapView`` objects the caller keeps current (the daemon
from the maps parents send, the simulator from the parents' own state).

- **Rarest first, among the parents.** A piece held by one parent goes before one held
  by several (ties broken at random, so siblings spread over different pieces and have
  something to trade). The seed is asked first for what no peer parent holds (the rarest
  pieces of all), and otherwise only for what the peer parents leave of our link.
- **As many transfers as the link needs.** Transfers are added while the rates they are
  expected to bring (each parent's measured rate per transfer) fall short of the download
  rate, within ``max_inflight`` in all and one per parent (``per_parent`` while its pieces are
  quick: pipelining hides the gaps between them): a few fast
  transfers when parents are fast (each piece is ready to share sooner), more when they
  are loaded, so our link stays busy either way.
- **Deadlines.** A transfer may take ``slack`` times what the parent's measured rate (or,
  before a measurement, a share of the download link as slow as any) needs for the piece,
  at least ``min_deadline``; a parent measured slower than ``slack`` times below that share
  earns no longer deadline. A transfer over its deadline is abandoned and the piece goes
  elsewhere, and so is one whose bytes come far too slowly or not at all (the transport's
  watchdog: ``slow``); a parent that fails ``bad_after`` transfers (one, for a corrupt
  piece or a slow one) is dropped and named in the next report, which is how a slow or
  lying source stops being handed out.
- **Parents.** When no parent holds anything we lack for ``starve_after`` seconds, or a
  parent was dropped, the peer asks the supernode for parents (naming the idle ones).
  Each answer that came while starving and brought no piece doubles that wait, and
  ``idle_after``, up to 8 times; the next piece received ends the patience.
- **Endgame.** Once every missing piece is in flight and at most ``endgame`` are missing,
  a piece in flight longer than its expected time gets a second parent; the first copy
  wins.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol

from peer.policy_config import PolicyConfig
from swarmpull.core.bitfield import full, random_bit
from swarmpull.core.failures import FailureReason

# Failures after which a parent is dropped at once: what it sent was wrong, or came at a
# rate measured far below what the transfer needed (not a deadline missed under load).
_AT_ONCE = (FailureReason.CORRUPT, FailureReason.SLOW)

MAX_VAIN = 3  # at most 8 times as patient with parents that hold nothing for us


class MapView(Protocol):
    """The pieces a parent holds, as far as we know."""

    bits: int


@dataclass(slots=True)
class Report:
    """What a parent did for us since the last report."""

    bytes: int = 0
    seconds: float = 0.0
    failures: int = 0
    reason: FailureReason | None = None


@dataclass(slots=True)
class ParentLink:
    """One parent, as this blob's download sees it."""

    id: str
    seed: bool
    view: MapView
    inflight: int = 0
    rate: float = 0.0  # bytes per second of one transfer from it (EWMA); 0: not measured
    failures: int = 0
    busy_until: float = 0.0
    lacks: int = 0  # pieces its map shows but it answered it does not hold
    leaving: bool = False  # dropped: no new transfers, gone once its last one ends
    idle_since: float | None = None  # since when it holds nothing we lack
    report: Report = field(default_factory=Report)

    @property
    def bits(self) -> int:
        return self.view.bits & ~self.lacks


class PiecePolicy:
    """The choices of one blob's download. One writer: its download (or the simulator)."""

    def __init__(
        self,
        count: int,
        piece_size: int,
        config: PolicyConfig,
        rng: random.Random,
        *,
        have: int = 0,
        download_rate: float | None = None,
    ) -> None:
        self.count = count
        self.piece_size = piece_size
        self.config = config
        self._rng = rng
        self._full = full(count)
        self.have = have & self._full
        self.inflight: dict[int, dict[str, float]] = {}  # piece -> parent -> started
        self.inflight_bits = 0
        self.transfers = 0  # under way: the copies in ``inflight`` (two of a piece in the endgame)
        self.parents: dict[str, ParentLink] = {}
        self.dropped: dict[str, None] = {}  # idle parents to name in the next report
        self.bad: dict[str, None] = {}  # failing parents to name in the next report
        # parent -> (since when it refused all we asked, busy or not held; its latest
        # refusal): kept while it is let go as idle and given back (a parent that answers
        # "not held" looks idle)
        self._refused: dict[str, tuple[float, float]] = {}
        self._departed: dict[str, Report] = {}  # what parents that left did, for the report
        self.download_rate = download_rate or 100e6
        self._first_rate = self.download_rate / config.first_streams  # an unmeasured parent's
        quick = max(config.quick_floor, config.idle_pieces * piece_size / self.download_rate)
        self.idle_after = min(config.idle_after, quick)
        self.wake_interval = min(config.wake_interval, quick)  # looks at the parents while waiting
        self._starving_since: float | None = None
        self._vain = 0  # answers in a row that came while we starved, with no piece since
        self._want_parents = True

    def __repr__(self) -> str:
        return f"<PiecePolicy {self.have.bit_count()}/{self.count} inflight={len(self.inflight)}>"

    @property
    def done(self) -> bool:
        return self.have == self._full

    @property
    def missing(self) -> int:
        return self.count - self.have.bit_count()

    @property
    def unassigned(self) -> int:
        """The pieces we lack that no transfer is fetching."""
        return self._full & ~self.have & ~self.inflight_bits

    # ---------------------------------------------------------------- parents

    def set_parents(self, parents: list[tuple[str, bool, MapView]]) -> None:
        """The supernode's answer: these are our parents now (``(id, seed, view)``)."""
        keep = {}
        for parent_id, seed, view in parents:
            if parent_id in self.bad:
                continue  # answered before it read our report: not again
            link = self.parents.get(parent_id)
            if link is None:
                link = ParentLink(parent_id, seed, view)
            link.leaving = False
            keep[parent_id] = link
        for parent_id, link in self.parents.items():
            if parent_id in keep:
                continue
            if link.inflight:
                link.leaving = True  # let what is under way finish
                keep[parent_id] = link
            elif link.report.bytes or link.report.failures:
                self._departed[parent_id] = link.report
        self.parents = keep
        self._want_parents = False
        if self._starving_since is not None:  # asked while starving: was it worth it?
            self._vain = min(self._vain + 1, MAX_VAIN)
        self._starving_since = None

    def needs_parents(self, now: float) -> bool:
        """Whether to ask the supernode for (other) parents now."""
        if self.done:
            return False
        if self._want_parents or not self.parents:
            return True
        since = self._starving_since
        if since is not None and now - since >= self.config.starve_after * self._patience:
            return True
        patience = self.idle_after * self._patience
        for link in self.parents.values():  # any idle (``_idle``), looked at on every choice
            since = link.idle_since
            if since is not None and not link.inflight and now - since >= patience:
                return True
        return False

    @property
    def _patience(self) -> int:
        """How many times ``starve_after`` and ``idle_after`` we wait: doubled by each
        answer that came while we starved and brought no piece before we starved again
        (early in a big surge almost nobody holds anything, and asking every half second
        only churns parents and the supernode), back to 1 with the next piece."""
        return 1 << self._vain

    def _idle(self, link: ParentLink, now: float) -> bool:
        since = link.idle_since
        patience = self.idle_after * self._patience
        return since is not None and not link.inflight and now - since >= patience

    def offers(self, parent_id: str) -> bool:
        """Whether this parent holds pieces we lack and are not fetching."""
        link = self.parents.get(parent_id)
        return link is not None and bool(link.bits & self.unassigned)

    def take_report(self, now: float) -> tuple[dict[str, Report], list[str], list[str]]:
        """What to tell the supernode: per parent, then idle and bad parents to drop."""
        reports, self._departed = self._departed, {}
        for link in self.parents.values():
            if link.report.bytes or link.report.failures:
                reports[link.id] = link.report
                link.report = Report()
            if self._idle(link, now):  # it has nothing for us: let another come
                self.dropped[link.id] = None
        dropped, bad = list(self.dropped), list(self.bad)
        for parent_id in dropped:
            self._leave(parent_id)
        self.dropped.clear()
        self.bad.clear()
        return reports, dropped, bad

    # ---------------------------------------------------------------- choices

    def choose(
        self, now: float, room: int, known: int | None = None, ahead: float = 0.0, awaited: int = 0
    ) -> list[tuple[int, str]]:
        """Up to ``room`` transfers to start: ``(piece, parent)``. ``known``: the pieces
        whose sha256 we can check (None: all); ``ahead``: bytes per second of the link
        that downloads before this one are expected to use (``peer.share``); ``awaited``:
        the pieces a reader waits on (a runtime reads a layer in order), taken first,
        from a peer if one holds them."""
        room = min(room, self.config.max_inflight - self.transfers)
        lacking = self._full & ~self.have
        if room <= 0 or not lacking:
            return []
        wanted = lacking & ~self.inflight_bits
        if known is not None:
            wanted &= known
        ones = twos = 0
        ours = self.config.headroom * self.download_rate - ahead  # the link older downloads leave us
        # Older downloads fill the link: a parent with nothing new costs nothing while we
        # wait our turn (letting it go would only churn parents and calls).
        behind = ours <= 0
        peers: list[ParentLink] = []
        seeds: list[ParentLink] = []
        for link in self.parents.values():
            if link.leaving or link.busy_until > now:
                continue
            if link.seed:
                seeds.append(link)
                continue
            peers.append(link)
            bits = link.view.bits
            if link.lacks:  # ``link.bits``, without two new integers for the usual case
                bits &= ~link.lacks
            if bits & lacking or behind:
                link.idle_since = None
            elif link.idle_since is None:
                link.idle_since = now
            m = bits & wanted
            twos |= ones & m
            ones |= m
        picks: list[tuple[int, str]] = []
        target = ours - self.projected()
        link_full = target <= 0  # by our transfers or older downloads': that is not starving
        hot = wanted & awaited
        if hot and target > 0:  # without it the reader stalls: a pull waited 300 s on one
            target = self._from(peers, hot, hot, room, target, now, picks)
            wanted &= ~self.inflight_bits
            if seeds and wanted & hot and target > 0:
                target = self._from(seeds, wanted & hot, hot, room, target, now, picks)
                wanted &= ~self.inflight_bits
        if seeds and wanted & ~ones:  # only the seed holds these: the rarest of all
            target = self._from(seeds, wanted & ~ones, wanted & ~ones, room, target, now, picks)
            wanted &= ~self.inflight_bits
        if ones and target > 0:
            target = self._from(peers, wanted, ones & ~twos, room, target, now, picks)
            wanted &= ~self.inflight_bits
        if seeds and target > 0:  # the seed's spare room: anything
            self._from(seeds, wanted, wanted, room, target, now, picks)
        if picks:
            self._starving_since = None
        elif self._endgame_ready():
            picks.extend(self._endgame(now, room))
        elif link_full:
            self._starving_since = None
        elif self._starving_since is None:
            self._starving_since = now  # room, pieces to get, and nobody to get them from
        return picks

    def _from(
        self,
        links: list[ParentLink],
        wanted: int,
        rare: int,
        room: int,
        target: float,
        now: float,
        picks: list[tuple[int, str]],
    ) -> float:
        """Round-robin over ``links`` (fastest first), one piece per turn, rarest first,
        until the expected rates reach ``target``; returns what is left of it.

        A parent carries one transfer at once; ``per_parent`` while its pieces are quick
        (expected within ``pipeline_below``: pipelined), two while it has upload to spare
        and our link is underfed (``spare_share``, ``spare_below``, ``spare_until``)."""
        first = self._first_rate
        rng = self._rng
        config = self.config
        piece_size, pipeline_below, spare_below = self.piece_size, config.pipeline_below, config.spare_below
        fair = self.download_rate / max(1, len(self.parents))  # our link shared among our parents
        spare_rate = config.spare_share * fair  # a parent bringing this per transfer has upload to spare
        underfed_above = (config.headroom - config.spare_until) * self.download_rate
        two = min(2, config.per_parent)
        links = sorted(
            links,
            key=lambda link: (-(link.rate if link.rate > 0 else first) / (link.inflight + 1), rng.random()),
        )
        while len(picks) < room and wanted and target > 0:
            progress = False
            for link in links:
                if len(picks) >= room or target <= 0:
                    return target
                rate = link.rate if link.rate > 0 else first  # ``_rate``
                if piece_size <= pipeline_below * rate:
                    cap = config.per_parent
                elif link.rate >= spare_rate and piece_size <= spare_below * rate and target > underfed_above:
                    cap = two
                else:
                    cap = 1
                if link.inflight >= cap:
                    continue
                mine = link.view.bits & wanted
                if mine and link.lacks:
                    mine &= ~link.lacks
                if not mine:
                    continue
                pool = mine & rare or mine
                piece = random_bit(pool, rng)
                self._start(piece, link, now)
                picks.append((piece, link.id))
                target -= rate
                wanted &= ~(1 << piece)
                rare &= ~(1 << piece)
                progress = True
            if not progress:
                return target
        return target

    def _endgame_ready(self) -> bool:
        missing = self._full & ~self.have
        return bool(missing) and missing & ~self.inflight_bits == 0 and self.missing <= self.config.endgame

    def _endgame(self, now: float, room: int) -> list[tuple[int, str]]:
        if not self._endgame_ready():
            return []
        picks: list[tuple[int, str]] = []
        for piece, copies in list(self.inflight.items()):
            if len(picks) >= room or len(copies) > 1:
                continue
            ((parent_id, started),) = copies.items()
            link = self.parents.get(parent_id)
            if link is not None and now - started < self._expected(link):
                continue
            for other in self.parents.values():
                if other.id == parent_id or other.inflight >= self.config.per_parent:
                    continue
                if other.bits >> piece & 1:
                    self._start(piece, other, now)
                    picks.append((piece, other.id))
                    break
        return picks

    # ---------------------------------------------------------------- outcomes

    def finished(self, piece: int, parent_id: str, size: int, seconds: float, now: float) -> list[str]:
        """A verified copy of ``piece`` came from ``parent_id``; returns the parents of its
        other copies in flight, to cancel."""
        copies = self._stop(piece)
        self.have |= 1 << piece
        self._vain = 0
        self._refused.pop(parent_id, None)
        link = self.parents.get(parent_id)
        if link is not None:
            link.failures = 0
            # A blob's short last piece times the source's latency, not its rate: 43 bytes
            # in half a second is no 86 B/s source (one such report degraded honest peers).
            if size * 2 >= self.piece_size:
                rate = size / max(seconds, 1e-6)
                link.rate = rate if link.rate == 0 else 0.7 * link.rate + 0.3 * rate
                link.report.bytes += size
                link.report.seconds += seconds
        self._starving_since = None
        return [p for p in copies if p != parent_id] if len(copies) > 1 else []

    def failed(self, piece: int, parent_id: str, reason: FailureReason, now: float) -> None:
        """A transfer of ``piece`` from ``parent_id`` failed; the piece can go elsewhere."""
        copies = self.inflight.get(piece)
        if copies is not None and copies.pop(parent_id, None) is not None:
            self._release(parent_id)
            if not copies:
                del self.inflight[piece]
                self.inflight_bits &= ~(1 << piece)
        link = self.parents.get(parent_id)
        if link is None:
            return
        if reason is FailureReason.BUSY or reason is FailureReason.MISSING:
            if reason is FailureReason.BUSY:
                link.busy_until = now + self.config.busy_backoff
            else:
                link.lacks |= 1 << piece  # until its next map
            since, latest = self._refused.get(parent_id, (now, now))
            if now - latest > self.config.refused_after:
                since = now  # a refusal long ago and none since: a run of them starts anew
            self._refused[parent_id] = (since, now)
            if not link.seed and now - since >= self.config.refused_after:
                self._fault(link, reason, at_once=True)
            return
        self._fault(link, reason)

    def parent_failed(self, parent_id: str, reason: FailureReason, now: float) -> None:
        """The parent failed us outside a transfer (its map did not come, or came forged)."""
        link = self.parents.get(parent_id)
        if link is not None:
            self._fault(link, reason)

    def _fault(self, link: ParentLink, reason: FailureReason, at_once: bool = False) -> None:
        link.failures += 1
        link.report.failures += 1
        link.report.reason = reason
        if at_once or reason in _AT_ONCE or link.failures >= self.config.bad_after:
            self.bad[link.id] = None
            self._want_parents = True
            self._leave(link.id)

    def map_changed(self, parent_id: str) -> None:
        """A fresh map of this parent arrived: what it said it lacks, it may hold now."""
        link = self.parents.get(parent_id)
        if link is not None:
            link.lacks = 0

    def deadline(self, parent_id: str, size: int, sharing: int = 1) -> float:
        """Seconds a transfer of ``size`` bytes from this parent may take. ``sharing``: the
        node's transfers under way (of every blob), which share its download link: a
        transfer is not late because the node's own link is shared (timing it out would
        only throw its bytes away and ask for them again)."""
        link = self.parents.get(parent_id)
        # Unmeasured, a parent is given the time of a share of the link as slow as any:
        # its line of requests, not only its link, decides how long the first piece takes.
        # Measured, its own rate (a loaded honest parent is slow), down to ``slack`` times
        # below that share and no further: a crawling source would earn a deadline to
        # match (a slow source's short piece once set one of 50 minutes).
        share = self.download_rate / self.config.max_inflight
        rate = link.rate if link is not None and link.rate > 0 else share
        rate = min(max(rate, share / self.config.slack), self.download_rate / max(1, sharing))
        return max(self.config.min_deadline, self.config.slack * size / max(rate, 1.0))

    # ---------------------------------------------------------------- internals

    def _rate(self, link: ParentLink) -> float:
        """What one more transfer from this parent is expected to bring."""
        return link.rate if link.rate > 0 else self._first_rate

    def projected(self) -> float:
        """Bytes per second the transfers under way are expected to bring."""
        total = 0.0
        first = self._first_rate
        # Per parent, not per copy in ``inflight``: the same sum, as a parent with transfers
        # under way stays in ``parents`` until they end (``set_parents``, ``_leave``).
        for link in self.parents.values():
            if link.inflight:
                total += link.inflight * (link.rate if link.rate > 0 else first)  # ``_rate``
        return total

    def _expected(self, link: ParentLink) -> float:
        return self.piece_size / max(self._rate(link), 1.0)

    def _start(self, piece: int, link: ParentLink, now: float) -> None:
        self.inflight.setdefault(piece, {})[link.id] = now
        self.inflight_bits |= 1 << piece
        self.transfers += 1
        link.inflight += 1

    def _stop(self, piece: int) -> dict[str, float]:
        """No transfer of ``piece`` is under way any more; the copies that were."""
        copies = self.inflight.pop(piece, {})
        self.inflight_bits &= ~(1 << piece)
        for parent_id in copies:
            self._release(parent_id)
        return copies

    def _release(self, parent_id: str) -> None:
        self.transfers -= 1
        link = self.parents.get(parent_id)
        if link is not None:
            link.inflight -= 1
            if link.leaving and not link.inflight:
                self._forget(link)

    def _leave(self, parent_id: str) -> None:
        link = self.parents.get(parent_id)
        if link is None:
            return
        link.leaving = True
        if not link.inflight:
            self._forget(link)

    def _forget(self, link: ParentLink) -> None:
        del self.parents[link.id]
        if link.report.bytes or link.report.failures:
            self._departed[link.id] = link.report
