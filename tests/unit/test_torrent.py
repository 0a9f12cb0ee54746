"""BitTorrent pieces without a network: bencoding, v2 torrents of blobs, the tracker's
answers, and the check a downloaded blob passes before the store adopts it."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import os
import random
from urllib.parse import quote_from_bytes

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer.torrents import _Lander
from swarmpull.core.bencode import BencodeError, decode, encode
from swarmpull.core.blobs import DownloadFailed
from swarmpull.core.digest import Digest
from swarmpull.core.geometry import PieceGeometry
from swarmpull.core.signing import PieceStatement, Signer
from swarmpull.core.tracker import AnnounceError, Endpoint, Tracker, parse_announce
from swarmpull.edges.store import BlobMeta, PieceStore, StoredBlob
from swarmpull.edges.torrent import Landing, TorrentError, make_torrent, parse_torrent

KiB = 1024
TASK = "sha256-" + "ab" * 32

values = st.recursive(
    st.integers() | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.binary(max_size=8), inner, max_size=5),
    max_leaves=20,
)


@given(values)
def test_bencode_round_trips(value):
    assert decode(encode(value)) == value


@pytest.mark.parametrize(
    "data",
    [
        b"i01e",
        b"i-0e",
        b"ie",
        b"3:ab",
        b"d1:b0:1:a0:e",
        b"d1:a0:1:a0:e",
        b"l" * 100 + b"e" * 100,
        b"i1ei2e",
        b"x",
    ],
)
def test_bencode_refuses_what_is_not_one_canonical_value(data):
    with pytest.raises(BencodeError):
        decode(data)


def blob_file(tmp_path, size: int, name: str = f"{TASK}.data"):
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


def test_a_blob_makes_a_private_v2_torrent_of_itself(tmp_path):
    path = blob_file(tmp_path, 300 * KiB + 7)
    meta = make_torrent(path, 64 * KiB)
    torrent = decode(meta.data)
    info = torrent[b"info"]
    assert info[b"meta version"] == 2 and info[b"private"] == 1 and b"pieces" not in info
    assert info[b"piece length"] == 64 * KiB
    assert meta.info_hash == hashlib.sha256(encode(info)).digest() and len(meta.info_hash) == 32
    assert meta.announce_hash == meta.info_hash[:20]
    assert b"announce" not in torrent  # each node adds its own URL, with its token
    assert make_torrent(path, 64 * KiB).data == meta.data  # the same blob, the same torrent
    assert make_torrent(path, 4 * KiB).piece_size == 16 * KiB  # v2 pieces hold whole blocks


def test_a_torrent_for_another_blob_is_refused(tmp_path):
    path = blob_file(tmp_path, 100 * KiB)
    meta = make_torrent(path, 16 * KiB)
    parse_torrent(meta.data, name=path.name, size=100 * KiB)
    with pytest.raises(TorrentError, match="one file of"):
        parse_torrent(meta.data, name=path.name, size=100 * KiB + 1)
    with pytest.raises(TorrentError, match="not of"):
        parse_torrent(meta.data, name="sha256-" + "cd" * 32 + ".data", size=100 * KiB)
    info = decode(meta.data)
    info[b"info"][b"private"] = 0
    with pytest.raises(TorrentError, match="private"):
        parse_torrent(encode(info), name=path.name, size=100 * KiB)
    with pytest.raises(TorrentError):
        parse_torrent(meta.data[:-3], name=path.name, size=100 * KiB)


def statements_for(data: bytes, geometry: PieceGeometry) -> list[PieceStatement]:
    signer = Signer.generate()
    out = []
    for piece in range(geometry.count):
        chunk = data[geometry.offset(piece) : geometry.offset(piece) + geometry.length(piece)]
        out.append(signer.piece(TASK, piece, hashlib.sha256(chunk).hexdigest()))
    return out


@settings(deadline=None)  # a correctness property: how long an example takes is no failure
@given(
    size=st.integers(1, 40 * KiB),
    piece=st.integers(512, 9 * KiB),
    torrent_shift=st.integers(0, 4),
    held=st.integers(0, (1 << 64) - 1),
    order=st.randoms(use_true_random=False),
)
def test_a_store_piece_lands_once_every_torrent_piece_over_it_passed(size, piece, torrent_shift, held, order):
    geometry = PieceGeometry(size, piece)
    torrent_piece = KiB << torrent_shift
    held &= (1 << geometry.count) - 1
    landing = Landing(geometry, torrent_piece, held)
    # libtorrent is asked only for torrent pieces not wholly inside held pieces
    for t, had in enumerate(landing.have):
        start, end = t * torrent_piece, min((t + 1) * torrent_piece, size)
        inside = range(start // piece, (end - 1) // piece + 1)
        assert had == all(held >> p & 1 for p in inside)
    # A held piece libtorrent would write over (a torrent piece it fetches covers part of
    # it) is named; none is where each swarm piece is whole torrent pieces.
    exposed = set(landing.exposed())
    for p in range(geometry.count):
        start, end = geometry.offset(p), geometry.offset(p) + geometry.length(p)
        fetched = any(
            not landing.have[t] for t in range(start // torrent_piece, (end - 1) // torrent_piece + 1)
        )
        assert (p in exposed) == (bool(held >> p & 1) and fetched)
    if piece % torrent_piece == 0:
        assert not exposed
    wanted = [t for t, had in enumerate(landing.have) if not had]
    order.shuffle(wanted)
    passed = {t for t, had in enumerate(landing.have) if had}
    named = []
    for t in wanted:
        passed.add(t)
        for p in landing.passed(t):
            start, end = geometry.offset(p), geometry.offset(p) + geometry.length(p)
            assert all(u in passed for u in range(start // torrent_piece, (end - 1) // torrent_piece + 1))
            named.append(p)
        assert landing.passed(t) == []  # a piece passed twice names nothing again
    assert sorted(named) == [p for p in range(geometry.count) if not held >> p & 1]
    assert landing.passed(len(landing.have)) == [] and landing.passed(-1) == []


async def test_the_lander_records_checked_pieces_and_refuses_a_wrong_whole(tmp_path):
    data = os.urandom(200 * KiB + 1)
    geometry = PieceGeometry(len(data), 64 * KiB)
    statements = {s.piece: s for s in statements_for(data, geometry)}
    store = PieceStore(tmp_path / "store")
    store.load()

    async def land(digest: Digest, corrupt: int | None = None) -> StoredBlob:
        blob = store.create(BlobMeta(TASK, len(data), 64 * KiB, str(digest)))
        written = bytearray(data)
        if corrupt is not None:
            written[geometry.offset(corrupt)] ^= 1
        with open(blob.path, "r+b") as file:  # as libtorrent writes it: straight into the file
            file.write(written)
        seen = []
        lander = _Lander(blob, statements, lambda: seen.append(blob.verified_count), lambda: asyncio.sleep(0))
        lander.check([1, 0])
        lander.check([2, 3])
        await lander.close()
        assert seen and seen[-1] == geometry.count - (corrupt is not None)
        assert not blob.complete
        await lander.finish(digest)
        return blob

    blob = await land(Digest.of(data))
    assert blob.complete and blob.all_verified and blob.read_piece(3) == data[3 * 64 * KiB :]
    assert blob.signed(1) == statements[1]
    store.remove(TASK)
    with pytest.raises(DownloadFailed, match="piece 2"):
        await land(Digest.of(data), corrupt=2)
    assert not store.get(TASK).is_verified(2)  # the bad piece was never readable
    store.remove(TASK)
    with pytest.raises(DownloadFailed, match="not sha256") as refused:
        await land(Digest.of(b"another blob"))
    assert refused.value.untrusted and not store.get(TASK).complete
    store.close()


def announce_query(
    info_hash: bytes, node: str, token: str, port: int = 6881, left: int = 100, **extra
) -> str:
    fields = {
        "info_hash": quote_from_bytes(info_hash),
        "peer_id": "-LT2110-" + "0" * 12,
        "port": str(port),
        "uploaded": "0",
        "downloaded": "0",
        "left": str(left),
        "compact": "1",
        "node": node,
        "token": token,
        **extra,
    }
    return "&".join(f"{k}={v}" for k, v in fields.items())


def test_the_tracker_answers_members_with_compact_peers():
    tracker = Tracker(b"secret", interval=30, rng=random.Random(1))
    info_hash = bytes(range(32))
    tracker.open(info_hash, Endpoint("10.0.0.1", 7000))
    tokens = {node: tracker.admit(info_hash, node) for node in ("a", "b", "c")}

    first = decode(
        tracker.announce(100.0, parse_announce(announce_query(info_hash[:20], "a", tokens["a"])), "10.0.0.2")
    )
    assert first[b"peers"] == bytes([10, 0, 0, 1]) + (7000).to_bytes(2, "big")  # the seed only, yet
    assert first[b"interval"] == 30
    tracker.announce(
        101.0, parse_announce(announce_query(info_hash[:20], "b", tokens["b"], 7001)), "2001:db8::1"
    )
    answer = decode(
        tracker.announce(102.0, parse_announce(announce_query(info_hash[:20], "c", tokens["c"])), "10.0.0.3")
    )
    peers = answer[b"peers"]
    assert len(peers) % 6 == 0 and {peers[i : i + 6] for i in range(0, len(peers), 6)} == {
        bytes([10, 0, 0, 1]) + (7000).to_bytes(2, "big"),
        bytes([10, 0, 0, 2]) + (6881).to_bytes(2, "big"),
    }
    assert answer[b"peers6"] == ipaddress.ip_address("2001:db8::1").packed + (7001).to_bytes(
        2, "big"
    )  # BEP 7
    assert answer[b"complete"] == 1 and answer[b"incomplete"] == 3


@pytest.mark.parametrize("token", ["%E9", "%ED%A0%80", "%FF"])
def test_a_token_that_is_no_ascii_is_refused_not_raised(token):
    # compare_digest takes ASCII text only: "%E9" raised TypeError (a 500 at /announce).
    tracker = Tracker(b"secret")
    info_hash = bytes(range(32))
    tracker.open(info_hash, Endpoint("10.0.0.1", 7000))
    tracker.admit(info_hash, "a")
    answer = decode(
        tracker.announce(100.0, parse_announce(announce_query(info_hash[:20], "a", token)), "10.0.0.2")
    )
    assert b"not a member" in answer[b"failure reason"]


@pytest.mark.parametrize("source", ["127.0.0.1", "::1", "::ffff:127.0.0.1", "0.0.0.0"])
def test_the_tracker_hands_out_no_loopback_peer_unless_the_cluster_is_on_one_host(source):
    # A proxy in front of the supernode: every announce from loopback, and every peer
    # told to dial a port of the announcer's choosing on its own host.
    info_hash = bytes(range(32))
    for loopback in (False, True):
        tracker = Tracker(b"secret", loopback=loopback)
        tracker.open(info_hash, None)
        token = tracker.admit(info_hash, "a")
        answer = decode(
            tracker.announce(1.0, parse_announce(announce_query(info_hash[:20], "a", token)), source)
        )
        refused = b"failure reason" in answer
        assert refused == (not loopback or source == "0.0.0.0"), answer


def test_the_tracker_refuses_strangers_and_forged_tokens():
    tracker = Tracker(b"secret")
    info_hash = bytes(32)
    tracker.open(info_hash, None)
    token = tracker.admit(info_hash, "a")
    forged = decode(
        tracker.announce(1.0, parse_announce(announce_query(info_hash[:20], "b", token)), "10.0.0.9")
    )
    assert b"failure reason" in forged
    other = Tracker(b"another secret")
    other.open(info_hash, None)
    other.admit(info_hash, "a")
    assert b"failure reason" in decode(
        other.announce(1.0, parse_announce(announce_query(info_hash[:20], "a", token)), "10.0.0.9")
    )
    unknown = decode(
        tracker.announce(1.0, parse_announce(announce_query(bytes([1]) * 20, "a", token)), "10.0.0.9")
    )
    assert unknown[b"failure reason"] == b"unknown torrent"
    tracker.close(info_hash)
    assert b"failure reason" in decode(
        tracker.announce(1.0, parse_announce(announce_query(info_hash[:20], "a", token)), "10.0.0.9")
    )


def test_a_seeder_gets_leechers_only_and_silent_peers_are_forgotten():
    tracker = Tracker(b"k", interval=10)
    info_hash = bytes(32)
    tracker.open(info_hash, Endpoint("10.0.0.1", 7000))
    tokens = {n: tracker.admit(info_hash, n) for n in "abc"}
    tracker.announce(
        0.0, parse_announce(announce_query(info_hash[:20], "a", tokens["a"], left=0)), "10.0.0.2"
    )
    tracker.announce(
        0.0, parse_announce(announce_query(info_hash[:20], "b", tokens["b"], left=5)), "10.0.0.3"
    )
    seeder = decode(
        tracker.announce(
            1.0, parse_announce(announce_query(info_hash[:20], "c", tokens["c"], left=0)), "10.0.0.4"
        )
    )
    assert seeder[b"peers"] == bytes([10, 0, 0, 3]) + (6881).to_bytes(2, "big")
    tracker.announce(
        40.0, parse_announce(announce_query(info_hash[:20], "b", tokens["b"], event="stopped")), "10.0.0.3"
    )
    assert set(tracker.peers(info_hash)) == set()  # a and c missed three announces, b left


@pytest.mark.parametrize(
    "change",
    [{"info_hash": "abc"}, {"port": "0"}, {"port": "x"}, {"event": "bogus"}, {"node": ""}, {"left": "-1"}],
)
def test_malformed_announces_are_refused(change):
    # A later field wins, as in the parser: the change overrides the good announce.
    query = announce_query(bytes(20), "a", "t") + "".join(f"&{k}={v}" for k, v in change.items())
    with pytest.raises(AnnounceError):
        parse_announce(query)
