"""The seed's ration: each piece leaves the seed a few times, then only where peers lack it.

A node asks the seed for every piece none of its parents holds, and at the start of a
surge its parents hold as little as it does: without a ration the seed, one machine,
would send most of the image to most of the nodes and set the surge's pace. With it,
each piece goes out ``copies`` times; after that the seed serves it only while fewer
than ``copies`` live peers are known to hold it (holders leave), and otherwise answers
"not held here" (``ELSEWHERE``). The requester then takes it from a peer, or, with no
parent holding it, asks the supernode for parents and gets ones that do (super-seeding,
as BitTorrent's seeds do).

Holdings reach the supernode in reports, a second or more after a piece lands, and the
moment a piece reaches the seed, every node waiting on it asks at once: a holder count
taken then is zero whatever the copies under way. So for ``grace`` seconds after a copy
went out a low count proves nothing: the seed answers "busy, ask again in a second"
(``LATER``), which keeps the requester off the seed for that second, not off the piece
(one told "not held here" asks the seed for that piece again only once the seed's map
changes, and one the reports do not back could leave it asking nobody: tried, it
stalled the default surge). After that a missing holder is believed, and one more copy
goes out (at most one per ``grace``).

Holders are counted for the requester: a parent it dropped as bad (it refused it every
piece for a while, or failed it) is none for it. Two nodes that took the seed's copies
and then answer every request "busy" would otherwise keep the seed on "peers hold it"
for every piece, and every other node waiting for ever. A requester gets each piece
past the ration this way once: one that drops every parent it is given as bad, to have
the seed send it the blob, has it once, not each time it asks.

A piece under ``small`` bytes always goes out: held back, it would save the seed next
to nothing and cost every node its whole pull. An image's config blob is one piece of a
few hundred bytes that every node needs before its pull ends, and the peers that hold
it have their uploads full of layer pieces: rationed, it was the last thing a 100-node
surge waited for (in two runs of one seed, until six times the surge's bound).

Holder counts come from the scheduler, one writer; this object only counts what the
seed sent.
"""

from __future__ import annotations

from collections.abc import Callable

from swarmpull.edges.transport import Ration

SMALL_PIECE = 16 * 1024  # bytes: a piece smaller than this always goes out


class SeedRation:
    def __init__(
        self,
        copies: int,
        holders: Callable[[str, int, str | None, float, int], int],
        now: Callable[[], float],
        grace: float,
        small: int = SMALL_PIECE,
    ) -> None:
        if copies < 1:
            raise ValueError("the seed must send each piece at least once")
        self.copies = copies
        self.grace = grace
        self.small = small
        self._holders = holders
        self._now = now
        self._sent: dict[str, dict[int, tuple[int, float]]] = {}  # piece -> (copies, last sent)
        self._extra: dict[str, dict[str, int]] = {}  # task -> requester -> pieces sent past the ration

    def decide(
        self, task_id: str, piece: int, size: int, take: bool = True, requester: str | None = None
    ) -> Ration:
        """Whether the seed sends ``piece`` (``size`` bytes) to ``requester`` now, and when
        ``take``, counts the copy if so (``give_back`` uncounts one that did not go out
        whole)."""
        if size < self.small:
            return Ration.SEND
        sent = self._sent.setdefault(task_id, {})
        count, last = sent.get(piece, (0, 0.0))
        now = self._now()
        extra = False  # past the ration because holders are none for this requester
        if count >= self.copies:
            holders = self._holders(task_id, piece, requester, now, self.copies)
            if holders >= self.copies:
                return Ration.ELSEWHERE
            if requester is not None and holders < self._holders(task_id, piece, None, now, self.copies):
                if self._extra.get(task_id, {}).get(requester, 0) >> piece & 1:
                    return Ration.ELSEWHERE  # it had this piece past the ration once
                extra = True
            if now - last < self.grace:
                return Ration.LATER
        if take:
            sent[piece] = (count + 1, now)
            if extra and requester is not None:
                mine = self._extra.setdefault(task_id, {})
                mine[requester] = mine.get(requester, 0) | 1 << piece
        return Ration.SEND

    def give_back(self, task_id: str, piece: int, size: int, requester: str | None = None) -> None:
        """A copy ``decide`` counted did not go out whole (the requester left, or was cut):
        it is not counted, so a requester that asks and hangs up spends no copy, and keeps
        no one else waiting."""
        entry = self._sent.get(task_id, {}).get(piece) if size >= self.small else None
        if entry is not None:
            count, last = entry
            self._sent[task_id][piece] = (max(0, count - 1), last)  # the others' grace holds
            mine = self._extra.get(task_id, {})
            if requester in mine:
                mine[requester] &= ~(1 << piece)

    def forget(self, task_id: str) -> None:
        """The seed dropped the blob: a copy it holds again is counted afresh."""
        self._sent.pop(task_id, None)
        self._extra.pop(task_id, None)
