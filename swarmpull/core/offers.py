"""A torrent offer: what the supernode hands a node so it can fetch a blob over BitTorrent.

``POST /api/v1/peers/{peer}/torrents {"task_id"}`` answers with the blob's geometry and
digest, the v2 torrent (base64), the announce URL with this node's token, and the
supernode's signed statement of every piece: once libtorrent has the file, the node
checks it against the digest and the statements, and serves it to HTTP peers with them.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from swarmpull.core.digest import Digest, DigestError
from swarmpull.core.fields import ProtocolError, _int, _obj, _task_id
from swarmpull.core.signing import STATEMENT_SIZE, PieceStatement, SignatureError
from swarmpull.core.tracker import ANNOUNCE_PATH

MAX_TORRENT_B64 = 24 << 20


@dataclass(frozen=True, slots=True)
class TorrentOffer:
    task_id: str
    size: int
    piece_size: int
    digest: Digest
    torrent: bytes = field(repr=False)
    announce: str = field(repr=False)  # carries this node's token
    statements: list[PieceStatement] = field(default_factory=list, repr=False)

    @property
    def name(self) -> str:
        """The file the torrent holds: the store's name for the blob's data."""
        return f"{self.task_id}.data"

    def to_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "size": self.size,
            "piece_size": self.piece_size,
            "digest": str(self.digest),
            "torrent": base64.b64encode(self.torrent).decode(),
            "announce": self.announce,
            "statements": base64.b64encode(b"".join(s.encode() for s in self.statements)).decode(),
        }


def _b64(body: dict[str, Any], key: str) -> bytes:
    value = body.get(key)
    if not isinstance(value, str) or len(value) > MAX_TORRENT_B64:
        raise ProtocolError(f"{key!r} must be base64")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"{key!r} must be base64") from None


def parse_torrent_offer(raw: Any) -> TorrentOffer:
    body = _obj(raw, "body")
    try:
        digest = Digest.parse(body.get("digest") if isinstance(body.get("digest"), str) else "")
    except DigestError as exc:
        raise ProtocolError(f"'digest': {exc}") from None
    announce = body.get("announce")
    parts = urlsplit(announce if isinstance(announce, str) else "")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path != ANNOUNCE_PATH:
        raise ProtocolError(f"'announce' must be an http(s) URL with the path {ANNOUNCE_PATH}")
    records = _b64(body, "statements")
    if len(records) % STATEMENT_SIZE:
        raise ProtocolError("'statements' must hold whole piece statements")
    try:
        statements = [
            PieceStatement.decode(records[i : i + STATEMENT_SIZE])
            for i in range(0, len(records), STATEMENT_SIZE)
        ]
    except SignatureError as exc:
        raise ProtocolError(f"'statements': {exc}") from None
    offer = TorrentOffer(
        _task_id(body.get("task_id"), "task_id"),
        _int(body, "size", 0, 1 << 50),
        _int(body, "piece_size", 1, 1 << 31),
        digest,
        _b64(body, "torrent"),
        str(announce),
        statements,
    )
    if offer.task_id != f"sha256-{digest.hex}":
        raise ProtocolError("a torrent is offered only for a blob keyed by its digest")
    return offer
