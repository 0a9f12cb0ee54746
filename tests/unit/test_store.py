"""The piece store on a temporary directory: verification, resume, quota, pinning."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from swarmpull.edges.store import BlobMeta, PieceCorrupt, PieceStore, StoreFull, WriteCancelled
from swarmpull.edges.store.blob import FORMAT
from swarmpull.edges.store.store import blobs_for

PIECE = 4096


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def meta(name: str, size: int) -> BlobMeta:
    return BlobMeta(f"sha256-{hashlib.sha256(name.encode()).hexdigest()}", size, PIECE)


def fill(blob, data: bytes, pieces=None) -> None:
    for piece in pieces if pieces is not None else range(blob.geometry.count):
        chunk = data[piece * PIECE : (piece + 1) * PIECE]
        writer = blob.writer(piece)
        writer.write(chunk[:100])
        writer.write(chunk[100:])
        writer.commit(sha(chunk))


def test_a_piece_is_readable_only_once_it_verified(tmp_path):
    store = PieceStore(tmp_path)
    store.load()
    data = os.urandom(3 * PIECE - 10)
    blob = store.create(meta("a", len(data)))
    writer = blob.writer(1)
    writer.write(b"x" * PIECE)
    with pytest.raises(PieceCorrupt, match="sha256"):
        writer.commit(sha(data[PIECE : 2 * PIECE]))
    assert not blob.is_verified(1)
    with pytest.raises(Exception, match="not verified"):
        blob.read_piece(1)
    fill(blob, data)
    assert blob.all_verified
    assert bytes(blob.read_piece(2)) == data[2 * PIECE :]
    assert blob.sha256_of_data() == sha(data)


def test_wrong_lengths_are_corrupt(tmp_path):
    store = PieceStore(tmp_path)
    blob = store.create(meta("a", 2 * PIECE))
    writer = blob.writer(0)
    with pytest.raises(PieceCorrupt, match="more than"):
        writer.write(b"x" * (PIECE + 1))
    short = blob.writer(1)
    short.write(b"x" * 10)
    with pytest.raises(PieceCorrupt, match="10 of"):
        short.commit(sha(b"x" * 10))


def test_a_second_copy_never_interleaves_with_the_first(tmp_path):
    store = PieceStore(tmp_path)
    good = os.urandom(PIECE)
    blob = store.create(meta("a", PIECE))
    first = blob.writer(0)  # writes into the file
    second = blob.writer(0)  # buffers in memory
    first.write(good[:2000])
    second.write(good)
    second.commit(sha(good))  # the buffered copy wins and cancels the first
    with pytest.raises(WriteCancelled):
        first.write(b"\0" * (PIECE - 2000))
    assert bytes(blob.read_piece(0)) == good
    with pytest.raises(WriteCancelled):
        blob.writer(0)


def test_restart_keeps_verified_pieces_and_drops_what_no_longer_hashes(tmp_path):
    data = os.urandom(4 * PIECE)
    store = PieceStore(tmp_path)
    blob = store.create(meta("a", len(data)))
    fill(blob, data, pieces=[0, 1, 3])
    task_id = blob.task_id
    store.close()
    with open(tmp_path / f"{task_id}.data", "r+b") as f:  # a lost write, after a power cut
        f.seek(PIECE + 5)
        f.write(b"\xff")
    with open(tmp_path / f"{task_id}.pieces", "ab") as f:  # a torn last record
        f.write(b"\x00\x00")
    (tmp_path / "stray.tmp").write_text("debris")
    again = PieceStore(tmp_path)
    again.load()
    blob = again.get(task_id)
    assert blob is not None and blob.verified_pieces() == [0, 3]
    assert not (tmp_path / "stray.tmp").exists()
    fill(blob, data, pieces=[1, 2])
    blob.mark_complete("sha256:" + sha(data))
    again.close()
    third = PieceStore(tmp_path)
    third.load()
    assert third.get(task_id).complete and third.get(task_id).all_verified


def test_a_record_nested_past_the_parser_is_removed_like_any_unreadable_one(tmp_path):
    store = PieceStore(tmp_path)
    kept = store.create(meta("kept", PIECE))
    store.close()
    hostile = tmp_path / f"sha256-{'f' * 64}.json"
    hostile.write_text("[" * 100_000 + "]" * 100_000)  # RecursionError stopped the daemon's start
    again = PieceStore(tmp_path)
    again.load()
    assert again.get(kept.task_id) is not None
    assert not hostile.exists()


def test_quota_evicts_least_recently_used_but_never_a_pinned_blob(tmp_path):
    evicted = []
    store = PieceStore(tmp_path, quota=3 * PIECE, on_evict=evicted.append)
    a = store.create(meta("a", PIECE))
    b = store.create(meta("b", PIECE))
    c = store.create(meta("c", PIECE))
    a.touch()  # b is now the least recently used
    store.create(meta("d", PIECE))
    assert evicted == [b.task_id] and store.get(b.task_id) is None
    assert not (tmp_path / f"{b.task_id}.data").exists()
    with store.pinned(c), store.pinned(a):
        store.create(meta("e", PIECE))  # d goes: a and c are in use
        with store.pinned(store.get(meta("e", 0).task_id)), pytest.raises(StoreFull, match="in use"):
            store.create(meta("f", PIECE))
    with pytest.raises(StoreFull, match="larger than the cache"):
        store.create(meta("g", 4 * PIECE))
    assert store.used <= 3 * PIECE


def test_the_count_of_blobs_is_bounded_like_their_bytes(tmp_path):
    # Each blob holds two descriptors: tiny blobs of many URLs (a supernode opens any a
    # node names) ran a process out of them while far below any byte quota.
    evicted = []
    store = PieceStore(tmp_path, on_evict=evicted.append, max_blobs=3)
    a, b, _ = (store.create(meta(name, 10)) for name in "abc")
    a.touch()
    store.create(meta("d", 10))
    assert evicted == [b.task_id] and len(store.blobs()) == 3
    with (
        store.pinned(a),
        store.pinned(store.get(meta("c", 0).task_id)),
        store.pinned(store.get(meta("d", 0).task_id)),
        pytest.raises(StoreFull, match="blobs"),
    ):
        store.create(meta("e", 10))
    assert blobs_for(1024) == 64 and blobs_for(1 << 20) == 65536 and blobs_for(100) == 16


def test_a_short_write_is_retried_until_every_byte_is_on_disk(tmp_path, monkeypatch):
    """os.pwrite may write fewer bytes than asked (a nearly full disk): the rest is
    written too, and the piece on disk is the piece verified."""
    import swarmpull.edges.store as store_module

    real = os.pwrite
    calls = []

    def short_pwrite(fd, data, offset):
        calls.append(len(data))
        return real(fd, bytes(data)[: max(1, len(data) // 3)], offset)

    monkeypatch.setattr(store_module.os, "pwrite", short_pwrite)
    store = PieceStore(tmp_path)
    data = os.urandom(2 * PIECE)
    blob = store.create(meta("a", len(data)))
    fill(blob, data)
    assert len(calls) > 4  # every write came back short at least once
    monkeypatch.setattr(store_module.os, "pwrite", real)
    assert blob.sha256_of_data() == sha(data)


def test_a_write_the_disk_refuses_fails_the_piece(tmp_path, monkeypatch):
    """ENOSPC, or a write that makes no progress, is an error: never a verified record
    over bytes that are not on disk."""
    import errno

    import swarmpull.edges.store as store_module
    from swarmpull.edges.store import StoreWriteError

    store = PieceStore(tmp_path)
    data = os.urandom(2 * PIECE)
    blob = store.create(meta("a", len(data)))

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module.os, "pwrite", full)
    writer = blob.writer(0)
    with pytest.raises(StoreWriteError, match="No space left"):
        writer.write(data[:PIECE])
    writer.abort()
    monkeypatch.setattr(store_module.os, "pwrite", lambda fd, data, offset: 0)
    writer = blob.writer(0)
    with pytest.raises(StoreWriteError, match="accepted none"):
        writer.write(data[:PIECE])
    writer.abort()
    assert not blob.is_verified(0)


def test_bit_rot_in_a_complete_blob_is_caught_after_a_restart(tmp_path):
    """A complete blob is trusted across a restart only piece by piece, once each piece
    hashes to its record again: a flipped byte drops the blob instead of being served."""
    from swarmpull.edges.store import PieceCorrupt

    data = os.urandom(3 * PIECE)
    store = PieceStore(tmp_path)
    store.load()
    blob = store.create(meta("a", len(data)))
    fill(blob, data)
    blob.mark_complete("sha256:" + sha(data))
    task_id = blob.task_id
    store.close()
    with open(tmp_path / f"{task_id}.data", "r+b") as f:
        f.seek(PIECE + 7)
        f.write(bytes([data[PIECE + 7] ^ 0xFF]))
    corrupted = []
    again = PieceStore(tmp_path, on_corrupt=lambda blob, piece: corrupted.append(piece))
    again.load()
    blob = again.get(task_id)
    assert blob is not None and blob.complete and blob.unchecked.bit_count() == 3
    assert blob.read_piece(0) == data[:PIECE]  # checked on the way out, and fine
    with pytest.raises(PieceCorrupt, match="no longer hashes"):
        blob.read_piece(1)
    assert corrupted == [1] and again.get(task_id) is None
    assert not (tmp_path / f"{task_id}.data").exists()


def test_bytes_changed_after_they_arrived_are_caught(tmp_path):
    """A piece is hashed from what is on disk, not from the buffer it came in: bytes that
    change between arriving and being written (or on disk before the commit) fail it."""
    store = PieceStore(tmp_path)
    data = os.urandom(PIECE)
    blob = store.create(meta("a", PIECE))
    writer = blob.writer(0)
    buffer = bytearray(data)
    writer.write(buffer)
    with open(tmp_path / f"{blob.task_id}.data", "r+b") as f:  # the disk, behind our back
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(PieceCorrupt, match="sha256"):
        writer.commit(sha(data))
    assert not blob.is_verified(0)


def test_one_daemon_per_directory(tmp_path):
    from swarmpull.edges.store import StoreLocked

    first = PieceStore(tmp_path)
    first.load()
    second = PieceStore(tmp_path)
    with pytest.raises(StoreLocked, match=str(tmp_path)):
        second.load()
    first.close()
    second.load()  # free again once the first one closed
    second.close()


def test_low_free_space_evicts_like_a_full_quota(tmp_path, monkeypatch):
    """The disk has room for 13 pieces and must keep 10 free: a second 2-piece blob only
    fits once the first is evicted, and not at all while the first is in use."""
    evicted = []
    store = PieceStore(tmp_path, on_evict=evicted.append, min_free=10 * PIECE)
    monkeypatch.setattr(store, "free_space", lambda: 13 * PIECE - store.used)
    a = store.create(meta("a", 2 * PIECE))
    with store.pinned(a), pytest.raises(StoreFull, match="disk full"):
        store.create(meta("b", 2 * PIECE))
    store.create(meta("b", 2 * PIECE))
    assert evicted == [a.task_id] and store.get(a.task_id) is None


def test_bytes_landed_through_the_mapping_are_hashed_from_the_file(tmp_path):
    """The fast path: a socket receives into the piece's mapped pages; what is hashed is
    still the file, so bytes changed after they landed (before the hash) are caught."""
    store = PieceStore(tmp_path)
    data = os.urandom(2 * PIECE)
    blob = store.create(meta("a", len(data)))
    assert blob.mapping is not None  # the file's blocks are reserved: mapped
    for piece, tamper in ((0, True), (1, False)):
        writer = blob.writer(piece)
        landing = writer.landing()
        landing[:PIECE] = data[piece * PIECE : (piece + 1) * PIECE]
        writer.landed(PIECE)
        if tamper:
            os.pwrite(blob.fd, b"\xff\xfe", piece * PIECE + 7)  # between landing and hashing
        writer.seal()
        digest = writer.digest()
        if tamper:
            with pytest.raises(PieceCorrupt):
                writer.commit(sha(data[:PIECE]), digest=digest)
        else:
            writer.commit(sha(data[PIECE:]), digest=digest)
    assert not blob.is_verified(0) and blob.read_piece(1) == data[PIECE:]


def test_a_second_copy_takes_the_region_before_it_writes_there(tmp_path):
    """The endgame twin is written to the file only after ``seal`` cancelled the copy that
    lands there, so the first copy can neither interleave with it nor commit over it."""
    store = PieceStore(tmp_path)
    good = os.urandom(PIECE)
    blob = store.create(meta("a", PIECE))
    first, second = blob.writer(0), blob.writer(0)
    first.landing()[:100] = good[:100]
    first.landed(100)
    second.write(good)
    second.seal()
    with pytest.raises(WriteCancelled):
        first.landing()  # the socket of the first copy is told at its next receive
    second.commit(sha(good), digest=second.digest())
    assert blob.read_piece(0) == good


async def test_hashing_in_threads_never_reorders_or_loses_a_piece(tmp_path):
    """Pieces verified in any order, each hashed in a thread, while the whole digest is fed
    in order by another: the digest is the blob's, every piece once."""
    import asyncio
    import random

    from swarmpull.edges.store import InOrderDigest

    store = PieceStore(tmp_path)
    data = os.urandom(64 * PIECE - 123)
    blob = store.create(meta("a", len(data)))
    whole = InOrderDigest(blob)
    order = list(range(blob.geometry.count))
    random.Random(7).shuffle(order)

    async def one(piece: int) -> None:
        chunk = data[piece * PIECE : (piece + 1) * PIECE]
        writer = blob.writer(piece)
        writer.write(chunk)
        writer.seal()
        writer.commit(sha(chunk), digest=await asyncio.to_thread(writer.digest))

    async def feed() -> None:
        while not whole.done:
            await asyncio.to_thread(whole.advance)
            await asyncio.sleep(0)

    feeder = asyncio.create_task(feed())
    await asyncio.gather(*(one(piece) for piece in order))
    await feeder
    assert whole.hexdigest() == sha(data)


# A restart over hostile files in the store's directory (attack round 10): each blob the
# disk spoiled is removed with a warning; the daemon starts, and nothing outside the
# directory is touched.
SPOILED = "sha256-" + "a" * 64


def spoiled_record(root: Path, **fields) -> None:
    meta = {
        "task_id": SPOILED,
        "size": 4096,
        "piece_size": 1 << 20,
        "digest": None,
        "url": "",
        "complete": False,
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{SPOILED}.json").write_text(json.dumps({**meta, "format": FORMAT, **fields}))
    (root / f"{SPOILED}.data").write_bytes(b"x" * 4096)


@pytest.mark.parametrize(
    "fields",
    [
        {"piece_size": -1}, {"piece_size": 0}, {"size": -5}, {"size": "4096"}, {"size": 4096.0},
        {"size": None}, {"size": True},
        {"size": 64 << 20},  # more than the cache holds: it was reserved past the quota
        {"size": 8192},  # not what its data file holds: it was stretched (a record of 1 TiB filled the disk)
    ],
)  # fmt: skip
def test_a_record_no_blob_has_is_removed_and_the_store_loads(tmp_path, fields):
    spoiled_record(tmp_path, **fields)
    store = PieceStore(tmp_path, quota=1 << 20)
    store.load()
    assert store.get(SPOILED) is None and not list(tmp_path.glob(f"{SPOILED}.*"))
    store.close()


@pytest.mark.parametrize("name", [f"{SPOILED}.data", f"{SPOILED}.pieces", f"{SPOILED}.json"])
def test_a_symlink_in_the_store_is_never_followed(tmp_path, name):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious" * 100)
    root = tmp_path / "blobs"
    spoiled_record(root, size=4096)
    (root / name).unlink(missing_ok=True)
    if name.endswith(".json"):
        os.symlink(tmp_path / "elsewhere.json", root / name)
        (tmp_path / "elsewhere.json").write_text((tmp_path / "victim").read_text())
    else:
        os.symlink(victim, root / name)
    store = PieceStore(root)
    store.load()
    assert store.get(SPOILED) is None
    store.close()
    assert victim.read_bytes() == b"precious" * 100
