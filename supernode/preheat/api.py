"""The preheat routes of the supernode API (``swarmpull.core.preheat`` has the bodies).

    POST /api/v1/preheat                 start a job: 201 and its status
    GET  /api/v1/preheat/{id}            its status: per blob, per node; 404 when unknown
    POST /api/v1/peers/{peer}/preheat    a node's progress in, its work out (a long poll)

Authentication, with mutual TLS: starting a preheat is an operator's act, and operators
hold no node certificate: it needs a certificate of the supernode role (``swarmpull
preheat --tls-dir`` with one issued for the operator's tool, docs/SECURITY.md); a node's
is refused (403). A poll is made in a peer's name (``caller``: ``peer_caller(gate)``, as
for torrent offers).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from aiohttp import web

from supernode.preheat.service import Preheats, TooManyJobs, TooManyPolls, UnknownJob
from supernode.torrent_api import named_peer
from swarmpull.core.identity import Role
from swarmpull.core.preheat import parse_preheat_poll, parse_preheat_request
from swarmpull.core.protocol import API
from swarmpull.edges.http import json_error, read_json
from swarmpull.edges.tls import OPEN, CallerGate

_JOB_ID = re.compile(r"^[0-9a-f]{16}$")


class PreheatApi:
    def __init__(
        self,
        preheats: Preheats,
        default_registry: str,
        caller: Callable[[web.Request], str] = named_peer,
        gate: CallerGate = OPEN,
    ) -> None:
        self._preheats = preheats
        self._default_registry = default_registry
        self._caller = caller
        self._gate = gate

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(f"{API}/preheat", self.create),
            web.get(f"{API}/preheat/{{job}}", self.status),
            web.post(f"{API}/peers/{{peer}}/preheat", self.poll),
        ]

    async def create(self, request: web.Request) -> web.Response:
        self._gate.of_role(request, Role.SUPERNODE)
        body = parse_preheat_request(await read_json(request), self._default_registry)
        try:
            job = self._preheats.create(body)
        except TooManyJobs as exc:
            return json_error(429, "TOO_MANY_PREHEATS", str(exc), {"Retry-After": "60"})
        return web.json_response(self._preheats.status(job.id), status=201)

    async def status(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job"]
        try:
            if not _JOB_ID.match(job_id):
                raise UnknownJob(job_id)
            return web.json_response(self._preheats.status(job_id))
        except UnknownJob:
            return json_error(404, "UNKNOWN_PREHEAT", f"no preheat {job_id!r} here")

    async def poll(self, request: web.Request) -> web.Response:
        node = self._caller(request)
        body = await read_json(request) if request.can_read_body else {}
        try:
            work = await self._preheats.poll(node, parse_preheat_poll(body))
        except TooManyPolls as exc:
            return json_error(429, "BUSY", str(exc), {"Retry-After": "5"})
        return web.json_response(work.to_json())
