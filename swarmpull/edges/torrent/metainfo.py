"""BitTorrent v2 torrents of single blobs: made by the supernode, checked by peers.

A v2 torrent (BEP 52) hashes its file as a SHA-256 merkle tree of 16 KiB blocks, so
libtorrent verifies every block it receives, not only whole pieces: a peer that sends one
bad block is caught at once and the block is fetched again. The torrents are private
(no DHT, no peer exchange: peers come from the supernode's tracker only) and carry no
tracker: each node adds the announce URL with its own token.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import libtorrent as lt

from swarmpull.core.bencode import BencodeError, decode, encode

MIN_PIECE = 16 << 10  # a v2 piece holds whole 16 KiB blocks
MAX_PIECE = 16 << 20
MAX_TORRENT = 16 << 20  # bytes of a .torrent we parse


class TorrentError(ValueError):
    """A torrent that is not the v2 torrent of the blob it claims to be."""


@dataclass(frozen=True, slots=True)
class Metainfo:
    data: bytes  # the bencoded torrent
    info_hash: bytes  # SHA-256 of the info dictionary (the v2 info-hash)
    name: str
    size: int
    piece_size: int

    def __repr__(self) -> str:
        return f"<Metainfo {self.name} {self.size}B v2={self.info_hash.hex()[:16]}>"

    @property
    def announce_hash(self) -> bytes:
        """What libtorrent sends a tracker for a v2 torrent: the info-hash truncated."""
        return self.info_hash[:20]


def torrent_piece_size(piece_size: int) -> int:
    """The torrent's piece size for a blob cut in ``piece_size`` pieces: the same, within
    what v2 allows and libtorrent handles well."""
    size = MIN_PIECE
    while size < min(piece_size, MAX_PIECE):
        size <<= 1
    return size


def make_torrent(path: Path, piece_size: int) -> Metainfo:
    """The v2 torrent of the file at ``path`` (named for the file). Reads and hashes the
    whole file: call it in a thread."""
    files = lt.list_files(str(path.absolute()))
    creator = lt.create_torrent(files, torrent_piece_size(piece_size), lt.create_torrent.v2_only)
    creator.set_priv(True)
    creator.set_creator("swarmpull")
    creator.set_creation_date(0)  # the same blob makes the same torrent
    lt.set_piece_hashes(creator, str(path.absolute().parent))
    # generate_buf() of the 2.1 wheels decodes the bencoding as text and breaks it.
    return parse_torrent(lt.bencode(creator.generate()), name=path.name, size=path.stat().st_size)


def parse_torrent(data: bytes, *, name: str, size: int) -> Metainfo:
    """``data`` if it is a private v2 torrent of one file called ``name`` of ``size``
    bytes; TorrentError otherwise. Whatever sent it, nothing else gets to libtorrent."""
    if len(data) > MAX_TORRENT:
        raise TorrentError("the torrent is too large")
    try:
        torrent = decode(data)
    except BencodeError as exc:
        raise TorrentError(f"not a torrent: {exc}") from None
    info = torrent.get(b"info") if isinstance(torrent, dict) else None
    if not isinstance(info, dict):
        raise TorrentError("the torrent has no info dictionary")
    if info.get(b"meta version") != 2 or b"pieces" in info or b"files" in info:
        raise TorrentError("only v2 torrents are accepted (SHA-256 merkle hashes)")
    if info.get(b"private") != 1:
        raise TorrentError("the torrent must be private")
    if info.get(b"name") != name.encode():
        raise TorrentError(f"the torrent is not of {name}")
    piece_size = info.get(b"piece length")
    if (
        not isinstance(piece_size, int)
        or not MIN_PIECE <= piece_size <= MAX_PIECE
        or piece_size & (piece_size - 1)
    ):
        raise TorrentError("bad piece length")
    entry = (
        info.get(b"file tree", {}).get(name.encode(), {}) if isinstance(info.get(b"file tree"), dict) else {}
    )
    leaf = entry.get(b"") if isinstance(entry, dict) and len(entry) == 1 else None
    if not isinstance(leaf, dict) or leaf.get(b"length") != size or len(info[b"file tree"]) != 1:
        raise TorrentError(f"the torrent must hold one file of {size} bytes")
    if size and not (isinstance(leaf.get(b"pieces root"), bytes) and len(leaf[b"pieces root"]) == 32):
        raise TorrentError("the file has no merkle root")
    try:
        lt.torrent_info(data)  # libtorrent's own checks (the piece layers against the roots)
    except (RuntimeError, ValueError) as exc:
        raise TorrentError(f"libtorrent refuses the torrent: {exc}") from None
    return Metainfo(data, hashlib.sha256(encode(info)).digest(), name, size, piece_size)
