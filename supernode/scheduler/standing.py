"""Reporters' standing: whose claims about sources count as witness. Sans-IO.

A requester's report can say a parent served corrupt bytes or could not be reached. Such
a claim costs its target dearly (an hour of quarantine, or being dropped), so a peer
that is caught lying stops being believed:

- a corrupt claim the supernode disproved (it fetched a piece from the accused source
  itself and the bytes were right, or it had just done so) is a strike;
- an unreachable claim is a strike once ``contradict_witnesses`` other requesters got
  bytes from the accused source after the claim (it was serving, just not to the liar).

A reporter with strikes about ``strikes_to_lose`` distinct sources within
``strike_seconds`` has no standing: its corrupt and unreachable claims count for
nothing and trigger no check. One strike is not enough, because an honest requester can
earn one: the supernode checks one piece, not the one the requester saw fail (reports do
not name it), so a source that corrupts a few pieces, or serves the supernode right and
its peers wrong, passes the check; and a requester cut off from one source by the
network sees it unreachable while others do not. Two sources, each doing that to the
same requester within the hour, are not chance; two sources honestly accused are.

Standing comes back slowly, as the strikes age out (an hour, as long as the quarantine a
lie tried to cause): a liar that could lie again at once would cost each victim a check
and a spell out of service every minute. Strikes survive re-registration (they are
keyed by the peer id, which mutual TLS binds to a certificate), and memory is bounded:
at most ``reporters`` records, the least recently struck forgotten first (a forgotten
liar has its standing back early).

Only requesters with standing contradict a claim. Colluders with standing (a source that
refuses honest requesters while three accomplices report getting bytes from it) can still
cost an honest accuser a strike; not two, unless they do it with two sources.

Timeouts cost no standing: a loaded source times out honest transfers all through a
surge, and a timeout already counts for nothing against a source that delivers to
anyone (``Scheduler``).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StandingConfig:
    """When a reporter loses its standing, and for how long."""

    strikes_to_lose: int = 2
    """Distinct sources a reporter's claims were disproved about before it has no standing."""
    strike_seconds: float = 3600.0
    """How long a strike counts (standing comes back as strikes age out)."""
    contradict_witnesses: int = 3
    """Other requesters that must get bytes from a source after an unreachable claim about
    it for that claim to be a lie."""
    claim_seconds: float = 60.0
    """How long an unreachable claim can still be contradicted."""
    reporters: int = 10_000
    """Most reporters with strikes remembered (bounded memory)."""
    claims: int = 10_000
    """Most sources with open unreachable claims remembered."""

    def __post_init__(self) -> None:
        for name in ("strikes_to_lose", "contradict_witnesses", "reporters", "claims"):
            if getattr(self, name) < 1:
                raise ValueError(f"StandingConfig.{name} must be at least 1")
        for name in ("strike_seconds", "claim_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"StandingConfig.{name} must be positive")


class _Claim:
    """One reporter's unreachable claim about a source, and who got bytes from it since."""

    __slots__ = ("at", "witnesses")

    def __init__(self, at: float) -> None:
        self.at = at
        self.witnesses: set[str] = set()  # at most ``contradict_witnesses``


class Standing:
    """Strikes per reporter; ``counts`` says whether its claims are witness."""

    def __init__(self, config: StandingConfig | None = None) -> None:
        self.config = config or StandingConfig()
        self._strikes: OrderedDict[str, dict[str, float]] = OrderedDict()  # reporter -> source -> when
        # source -> reporter -> its open unreachable claim about that source
        self._sources: OrderedDict[str, dict[str, _Claim]] = OrderedDict()

    def __repr__(self) -> str:
        return f"<Standing struck={len(self._strikes)} watched={len(self._sources)}>"

    def counts(self, reporter: str, now: float) -> bool:
        """Whether ``reporter``'s claims count as witness."""
        strikes = self._strikes.get(reporter)
        if strikes is None:
            return True
        horizon = now - self.config.strike_seconds
        for source in [s for s, t in strikes.items() if t <= horizon]:
            del strikes[source]
        if not strikes:
            del self._strikes[reporter]
            return True
        return len(strikes) < self.config.strikes_to_lose

    def disproved(self, reporter: str, source: str, now: float) -> bool:
        """``reporter`` claimed something false about ``source``. True when this cost it
        its standing (say so once)."""
        before = self.counts(reporter, now)
        strikes = self._strikes.pop(reporter, None) or {}
        strikes[source] = now
        self._strikes[reporter] = strikes  # most recently struck last
        while len(self._strikes) > self.config.reporters:
            self._strikes.popitem(last=False)
        return before and not self.counts(reporter, now)

    def claimed_unreachable(self, reporter: str, source: str, now: float) -> None:
        """``reporter`` could not reach ``source``: watch whether others can."""
        self._claims_about(source)[reporter] = _Claim(now)

    def delivered(self, source: str, requester: str, now: float) -> tuple[list[str], list[str]]:
        """``requester`` got bytes from ``source``. Returns the reporters whose unreachable
        claims about it this contradicts, and those of them that lost standing by it."""
        claims = self._sources.get(source)
        if claims is None:
            return [], []
        horizon = now - self.config.claim_seconds
        needed = self.config.contradict_witnesses
        liars, lost = [], []
        for reporter, claim in list(claims.items()):
            if claim.at <= horizon:
                del claims[reporter]  # too old to contradict
                continue
            if reporter == requester or now <= claim.at:
                continue
            claim.witnesses.add(requester)
            if len(claim.witnesses) >= needed:
                del claims[reporter]
                liars.append(reporter)
                if self.disproved(reporter, source, now):
                    lost.append(reporter)
        if not claims:
            del self._sources[source]
        return liars, lost

    def _claims_about(self, source: str) -> dict[str, _Claim]:
        claims = self._sources.pop(source, None)
        if claims is None:
            claims = {}
        self._sources[source] = claims  # most recently claimed about last
        while len(self._sources) > self.config.claims:
            self._sources.popitem(last=False)
        return claims
