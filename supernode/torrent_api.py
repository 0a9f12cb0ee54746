"""The supernode's BitTorrent routes: torrent offers to nodes, and the tracker.

    POST /api/v1/peers/{peer}/torrents  {"task_id"}   the blob's torrent for this node
                                        (``swarmpull.core.offers``); 409 NOT_SEEDED when
                                        the seed does not hold the blob completely
    GET  /announce?...&node=..&token=..               the tracker (BEP 3, compact BEP 23):
                                        bencoded, members of the torrent only

Authentication: an offer is asked for in a peer's name, like its reports; with mutual
TLS ``caller`` is ``peer_caller(gate)``: the certificate must name that peer. The peer
must also hold a capability for the task (``may_have``: the blob is public, or the
supernode granted that peer one on open, or a preheat job assigned it the blob): else
403 PULL_DENIED, and the node pulls over HTTP, opening the task with its credentials. An
announce cannot carry a client certificate (libtorrent's tracker client has none), so
it is authenticated by the token in its URL, which only the offer, over the
authenticated API, hands out: ``/announce`` stays reachable without a client
certificate.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from supernode.scheduler import UnknownPeer
from supernode.torrents import NotSeeded, SeedTorrents
from swarmpull.core.clock import Clock
from swarmpull.core.fields import ProtocolError, _obj, _task_id, parse_peer_id
from swarmpull.core.protocol import API
from swarmpull.core.tracker import ANNOUNCE_PATH, AnnounceError, Tracker, failure, parse_announce
from swarmpull.edges.http import json_error, read_json
from swarmpull.edges.tls import CallerGate


def named_peer(request: web.Request) -> str:
    """The peer a request acts for: the ``{peer}`` of its path, unchecked (no mutual TLS)."""
    return parse_peer_id(request.match_info["peer"])


def peer_caller(gate: CallerGate) -> Callable[[web.Request], str]:
    """``named_peer``, once ``gate`` let the caller act for that peer (its certificate
    names it, with mutual TLS): 403 otherwise."""

    def caller(request: web.Request) -> str:
        peer_id = named_peer(request)
        gate.acting_for(request, peer_id)
        return peer_id

    return caller


class TorrentApi:
    def __init__(
        self,
        torrents: SeedTorrents,
        tracker: Tracker,
        knows_peer: Callable[[str], bool],
        clock: Clock,
        caller: Callable[[web.Request], str] = named_peer,
        may_have: Callable[[str, str], bool] | None = None,
    ) -> None:
        self._torrents = torrents
        # (task, peer): the peer may pull the blob (a capability, a public blob, a preheat).
        self._may_have = may_have
        self._clock = clock
        self._tracker = tracker
        self._knows_peer = knows_peer
        self._caller = caller

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(f"{API}/peers/{{peer}}/torrents", self.offer),
            web.get(ANNOUNCE_PATH, self.announce),
        ]

    async def offer(self, request: web.Request) -> web.Response:
        peer_id = self._caller(request)
        body = _obj(await read_json(request), "body")
        task_id = _task_id(body.get("task_id"), "task_id")
        if not self._knows_peer(peer_id):
            raise UnknownPeer(peer_id)
        if self._may_have is not None and not self._may_have(task_id, peer_id):
            message = f"{peer_id} holds no capability for {task_id}: open the task first"
            return json_error(403, "PULL_DENIED", message)
        try:
            offer = await self._torrents.offer(task_id, peer_id)
        except NotSeeded as exc:
            return json_error(409, "NOT_SEEDED", str(exc))
        return web.json_response(offer.to_json())

    async def announce(self, request: web.Request) -> web.Response:
        try:
            ann = parse_announce(request.rel_url.raw_query_string)
        except (AnnounceError, ProtocolError) as exc:
            return _bencoded(failure(str(exc)))
        return _bencoded(self._tracker.announce(self._clock.monotonic(), ann, request.remote or ""))


def _bencoded(body: bytes) -> web.Response:
    # Trackers answer 200 even to refusals: the reason is in the body, where clients look.
    return web.Response(body=body, content_type="text/plain")
