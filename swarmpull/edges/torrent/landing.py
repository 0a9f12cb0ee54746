"""A blob libtorrent writes straight into the piece store, taken in piece by piece.

libtorrent downloads into the store's own data file for the blob, and checks every
16 KiB block against the torrent's merkle tree; the torrent came from the supernode. The
store trusts nothing it did not check itself, against what the supernode signed: a
piece (in the swarm's geometry) becomes readable only once every torrent piece over it
passed libtorrent's check and its bytes in the file hash to its signed statement's
sha256; the blob is complete only once every piece is, and the whole file hashes to the
blob's digest. So a client reads the blob as it lands, as from the HTTP swarm, and no
byte is written twice.

``Landing`` is the bookkeeping (sans-IO): which of the store's pieces a passed torrent
piece completes (a torrent's pieces are powers of two, the swarm's need not be), and
which torrent pieces need no fetch because the store holds them verified already.
"""

from __future__ import annotations

from swarmpull.core.geometry import PieceGeometry


class Landing:
    def __init__(self, geometry: PieceGeometry, torrent_piece: int, held: int = 0) -> None:
        """``held``: the bitset of store pieces verified already (a resumed download)."""
        if torrent_piece < 1:
            raise ValueError("a torrent piece holds at least one byte")
        self._geometry = geometry
        self._torrent_piece = torrent_piece
        self._held = held
        count = -(-geometry.size // torrent_piece)
        self.have = [all(held >> p & 1 for p in self._store_pieces(t)) for t in range(count)]
        """Per torrent piece: inside pieces the store holds (libtorrent need not fetch it)."""
        self._passed = sum(1 << t for t, had in enumerate(self.have) if had)

    def __repr__(self) -> str:
        return f"<Landing {self._geometry.count} pieces, torrent pieces of {self._torrent_piece}>"

    def exposed(self) -> list[int]:
        """Held store pieces that share a torrent piece libtorrent will fetch: it would
        write that piece's blocks over them, unchecked (only where the geometries do not
        line up: a swarm piece that is not a whole number of torrent pieces)."""
        held = [p for p in range(self._geometry.count) if self._held >> p & 1]
        return [p for p in held if not all(self.have[t] for t in self._torrent_pieces(p))]

    def passed(self, torrent_piece: int) -> list[int]:
        """libtorrent checked ``torrent_piece``: the store pieces that are now wholly under
        checked torrent pieces, each named once."""
        if not 0 <= torrent_piece < len(self.have) or self._passed >> torrent_piece & 1:
            return []
        self._passed |= 1 << torrent_piece
        out = []
        for piece in self._store_pieces(torrent_piece):
            if self._held >> piece & 1:
                continue
            if all(self._passed >> t & 1 for t in self._torrent_pieces(piece)):
                self._held |= 1 << piece
                out.append(piece)
        return out

    def _store_pieces(self, torrent_piece: int) -> range:
        start = torrent_piece * self._torrent_piece
        end = min(start + self._torrent_piece, self._geometry.size)
        size = self._geometry.piece_size
        return range(start // size, (end - 1) // size + 1) if end > start else range(0)

    def _torrent_pieces(self, piece: int) -> range:
        start = self._geometry.offset(piece)
        end = start + self._geometry.length(piece)
        return range(start // self._torrent_piece, (end - 1) // self._torrent_piece + 1)
