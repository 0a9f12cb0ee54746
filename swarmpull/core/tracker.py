"""The supernode's BitTorrent tracker, sans-IO: announces in, bencoded answers out.

A tracker answers ``GET /announce?info_hash=..&peer_id=..&port=..&left=..&event=..``
(BEP 3) with the addresses of other peers of the torrent, packed six bytes per IPv4
peer and eighteen per IPv6 peer (BEP 23 ``peers``, BEP 7 ``peers6``). This one tracks
only the torrents the supernode made, and answers only their members:

- A node becomes a member of a torrent when the supernode hands it the torrent over the
  authenticated API (``admit``); with it comes a token, an HMAC of the node's id and
  the info-hash under the supernode's secret, which libtorrent repeats in every
  announce (the announce URL carries ``node`` and ``token``). A token proves who the
  supernode gave the torrent to; membership can still be withdrawn (``close``).
- The address of a peer is where its announce came from (never the ``ip`` parameter,
  which would let anyone point the swarm at a third party) with the port it names.
- The supernode's own seed is not announced: it is known in process (``open``) and
  handed to leechers.

Decisions take ``now`` and an ``rng``; nothing here reads a clock or a socket.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import random
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

from swarmpull.core.bencode import encode
from swarmpull.core.fields import ProtocolError, node_ip

ANNOUNCE_PATH = "/announce"  # libtorrent refuses other paths on loopback (SSRF mitigation)
EVENTS = ("", "started", "completed", "stopped", "paused")
DEFAULT_NUMWANT = 50
MAX_NUMWANT = 200


class AnnounceError(ValueError):
    """An announce that is malformed or not allowed; answered as a bencoded failure."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    ip: str
    port: int

    def compact(self) -> tuple[bytes, bool]:
        """The packed address and whether it is IPv6."""
        address = ipaddress.ip_address(self.ip)
        return address.packed + self.port.to_bytes(2, "big"), address.version == 6


@dataclass(frozen=True, slots=True)
class Announce:
    info_hash: bytes  # 20 bytes: a v2 info-hash is announced truncated
    peer_id: bytes
    port: int
    left: int
    event: str
    numwant: int
    node: str  # who the supernode gave the torrent to
    token: str


def parse_announce(raw_query: str) -> Announce:
    """The announce in a raw query string (``info_hash`` is raw bytes, percent-encoded)."""
    fields: dict[bytes, bytes] = {}
    for part in raw_query.split("&")[:64]:
        if part:
            key, _, value = part.partition("=")
            fields[unquote_to_bytes(key)] = unquote_to_bytes(value.replace("+", "%20"))

    def number(name: bytes, lo: int, hi: int, default: int | None = None) -> int:
        text = fields.get(name)
        if text is None and default is not None:
            return default
        if text is None or not text.isdigit() or len(text) > 20 or not lo <= int(text) <= hi:
            raise AnnounceError(f"{name.decode()} must be a number from {lo} to {hi}")
        return int(text)

    info_hash, peer_id = fields.get(b"info_hash", b""), fields.get(b"peer_id", b"")
    if len(info_hash) != 20:
        raise AnnounceError("info_hash must be 20 bytes")
    if len(peer_id) != 20:
        raise AnnounceError("peer_id must be 20 bytes")
    event = fields.get(b"event", b"").decode("latin-1")
    if event not in EVENTS:
        raise AnnounceError(f"unknown event {event[:20]!r}")
    node = fields.get(b"node", b"").decode("latin-1")
    token = fields.get(b"token", b"").decode("latin-1")
    if not node or len(node) > 128 or not token or len(token) > 128:
        raise AnnounceError("this tracker needs the node and token of the announce URL it gave out")
    return Announce(
        info_hash,
        peer_id,
        number(b"port", 1, 65535),
        number(b"left", 0, 1 << 62),
        event,
        min(number(b"numwant", 0, 1 << 20, DEFAULT_NUMWANT), MAX_NUMWANT),
        node,
        token,
    )


def announce_token(secret: bytes, node: str, info_hash: bytes) -> str:
    """The token that lets ``node`` announce for the torrent ``info_hash`` (20 bytes)."""
    return hmac.new(secret, node.encode() + b"\0" + info_hash[:20], hashlib.sha256).hexdigest()[:32]


def failure(reason: str) -> bytes:
    return encode({"failure reason": reason})


@dataclass(slots=True)
class _Peer:
    endpoint: Endpoint
    left: int
    seen: float


@dataclass(slots=True)
class _Swarm:
    seed: Endpoint | None
    members: set[str] = field(default_factory=set)
    peers: dict[str, _Peer] = field(default_factory=dict)  # node -> where it announced from
    swept: float = 0.0  # when silent peers were last forgotten


class Tracker:
    """The torrents the supernode tracks, who may join each, and who is in it."""

    def __init__(
        self, secret: bytes, interval: int = 30, rng: random.Random | None = None, loopback: bool = False
    ) -> None:
        """``loopback``: peers may announce from loopback (a cluster on one host)."""
        self._secret = secret
        self._loopback = loopback
        self.interval = interval
        self._rng = rng or random.Random()
        self._swarms: dict[bytes, _Swarm] = {}

    def __repr__(self) -> str:
        return f"<Tracker torrents={len(self._swarms)}>"

    def open(self, info_hash: bytes, seed: Endpoint | None) -> None:
        """Track a torrent (20-byte info-hash); ``seed``: where the supernode seeds it."""
        swarm = self._swarms.get(info_hash[:20])
        if swarm is None:
            self._swarms[info_hash[:20]] = _Swarm(seed)
        else:
            swarm.seed = seed

    def close(self, info_hash: bytes) -> None:
        """Stop tracking a torrent: its announces fail from now on."""
        self._swarms.pop(info_hash[:20], None)

    def admit(self, info_hash: bytes, node: str) -> str:
        """Make ``node`` a member of the torrent; returns its announce token."""
        swarm = self._swarms.get(info_hash[:20])
        if swarm is None:
            raise KeyError("not a torrent of this tracker")
        swarm.members.add(node)
        return announce_token(self._secret, node, info_hash)

    def peers(self, info_hash: bytes) -> dict[str, tuple[Endpoint, int]]:
        """Who announced for a torrent: node -> (address, bytes left)."""
        swarm = self._swarms.get(info_hash[:20])
        return {n: (p.endpoint, p.left) for n, p in swarm.peers.items()} if swarm else {}

    def announce(self, now: float, ann: Announce, ip: str) -> bytes:
        """The bencoded answer to an announce that came from ``ip``."""
        swarm = self._swarms.get(ann.info_hash)
        if swarm is None:
            return failure("unknown torrent")
        expected = announce_token(self._secret, ann.node, ann.info_hash)
        given = ann.token.encode("utf-8", "surrogatepass")  # compare_digest takes ASCII text only
        if ann.node not in swarm.members or not hmac.compare_digest(expected.encode(), given):
            return failure("not a member of this torrent")
        try:  # where it announced from, never its ``ip=``: it names no other host
            me = Endpoint(str(node_ip(ip, self._loopback)), ann.port)
        except ProtocolError as exc:
            return failure(f"unusable source address: {exc}")
        self._expire(swarm, now)
        if ann.event == "stopped":
            swarm.peers.pop(ann.node, None)
            return encode({"interval": self.interval, "peers": b""})
        swarm.peers[ann.node] = _Peer(me, ann.left, now)
        # A seeder needs only leechers; a leecher gets the seed and a random sample.
        others = [p for n, p in swarm.peers.items() if n != ann.node and (ann.left or p.left)]
        chosen = [p.endpoint for p in self._rng.sample(others, min(len(others), ann.numwant))]
        if swarm.seed is not None and ann.left and ann.numwant:
            chosen = [swarm.seed, *chosen[: ann.numwant - 1]]
        v4, v6 = [], []
        for endpoint in chosen:
            packed, is_v6 = endpoint.compact()
            (v6 if is_v6 else v4).append(packed)
        complete = sum(1 for p in swarm.peers.values() if not p.left) + (swarm.seed is not None)
        answer = {
            "interval": self.interval,
            "min interval": max(1, self.interval // 4),
            "complete": complete,
            "incomplete": len(swarm.peers) + (swarm.seed is not None) - complete,
            "peers": b"".join(v4),
        }
        if v6:
            answer["peers6"] = b"".join(v6)
        return encode(answer)

    def _expire(self, swarm: _Swarm, now: float) -> None:
        """Forget peers that missed three announces (they died without a 'stopped'); at most
        once a second, so announces cost O(1) on average, not O(swarm)."""
        if now - swarm.swept < 1.0:
            return
        swarm.swept = now
        stale = now - 3 * self.interval
        for node in [n for n, p in swarm.peers.items() if p.seen < stale]:
            del swarm.peers[node]
