"""Bitfields, signed piece statements and piece maps: what nodes trust from each other."""

from __future__ import annotations

import hashlib
import random

import pytest

from registry_proxy.errors import OciError
from registry_proxy.paths import parse_path
from swarmpull.core import bitfield
from swarmpull.core.digest import Digest
from swarmpull.core.fields import ProtocolError, parse_peer_id
from swarmpull.core.maps import MapError, PieceMap, decode_map
from swarmpull.core.protocol import parse_peer_report
from swarmpull.core.signing import (
    PieceStatement,
    SignatureError,
    Signer,
    TaskKeys,
    keys_from_json,
    keys_to_json,
)
from swarmpull.core.tasks import validate_task_id

TASK = "sha256-" + "ab" * 32
OTHER = "sha256-" + "cd" * 32


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_bitfields_round_trip_and_refuse_what_does_not_fit():
    mask = bitfield.of([0, 3, 9])
    assert bitfield.bits(mask) == [0, 3, 9]
    assert bitfield.from_text(bitfield.to_text(mask, 10), 10) == mask
    assert bitfield.full(10).bit_count() == 10
    with pytest.raises(bitfield.BitfieldError, match="beyond"):
        bitfield.decode(bytes([0, 0b100]), 10)  # piece 10 of a 10-piece blob
    with pytest.raises(bitfield.BitfieldError, match="bytes"):
        bitfield.decode(bytes(5), 10)
    with pytest.raises(bitfield.BitfieldError, match="base64"):
        bitfield.from_text("%%%", 10)
    rng = random.Random(1)
    seen = {bitfield.random_bit(mask, rng) for _ in range(200)}
    assert seen == {0, 3, 9}
    with pytest.raises(ValueError):
        bitfield.random_bit(0, rng)


def test_a_statement_checks_only_for_its_task_its_piece_and_a_trusted_key():
    signer = Signer.generate()
    keys = TaskKeys()
    keys.add(signer.public_key)
    statement = signer.piece(TASK, 3, sha(b"piece three"))
    assert keys.check(TASK, statement) == sha(b"piece three")
    assert PieceStatement.decode(statement.encode()) == statement
    with pytest.raises(SignatureError, match="does not match"):
        keys.check(OTHER, statement)  # replayed for another blob
    moved = PieceStatement(4, statement.sha, statement.key, statement.signature)
    with pytest.raises(SignatureError, match="does not match"):
        keys.check(TASK, moved)  # moved to another piece
    forged = PieceStatement(3, bytes.fromhex(sha(b"evil")), statement.key, statement.signature)
    with pytest.raises(SignatureError, match="does not match"):
        keys.check(TASK, forged)
    stranger = Signer.generate().piece(TASK, 3, sha(b"evil"))
    with pytest.raises(SignatureError, match="unknown key"):
        keys.check(TASK, stranger)  # a key the supernode never named
    assert Signer.from_pem(signer.to_pem()).public_key == signer.public_key
    assert keys_from_json(keys_to_json([signer.public_key])) == [signer.public_key]
    with pytest.raises(SignatureError):
        keys_from_json(["AAAA"])


def test_piece_maps_round_trip_and_every_field_is_checked():
    signer = Signer.generate()
    statements = [signer.piece(TASK, p, sha(bytes([p]))) for p in (1, 2)]
    piece_map = PieceMap(10, 3, bitfield.of([1, 2, 7]), statements)
    data = piece_map.encode()
    decoded = decode_map(data, 10)
    assert decoded.bits == piece_map.bits and decoded.statements == statements
    with pytest.raises(MapError, match="not a piece map of 11"):
        decode_map(data, 11)
    with pytest.raises(MapError, match="version"):
        decode_map(PieceMap(10, 5, bitfield.of([1]), []).encode(), 10)
    with pytest.raises(MapError, match="statements"):
        decode_map(data[:-1], 10)
    with pytest.raises(MapError, match="short"):
        decode_map(b"SPM1", 10)
    beyond = signer.piece(TASK, 12, sha(b"x"))
    with pytest.raises(MapError, match="piece 12"):
        decode_map(PieceMap(10, 1, bitfield.of([1]), [beyond]).encode(), 10)


@pytest.mark.parametrize(
    "check",
    [
        lambda s: parse_peer_id("peer-1" + s),
        lambda s: validate_task_id("sha256-" + "a" * 64 + s),
        lambda s: Digest.parse("sha256:" + "a" * 64 + s),
        lambda s: parse_path("/v2/library/alpine/manifests/latest" + s),
        lambda s: parse_peer_report({"tasks": [{"task_id": "sha256-" + "a" * 64, "have": "AA==" + s}]}),
    ],
)
def test_an_identifier_with_a_trailing_newline_is_refused(check):
    """`$` in a regex also matches before a final newline: every identifier is checked to
    the end of the string, so "id\\n" never becomes a file name, a URL or a log line."""
    check("")  # the same value without it is fine
    with pytest.raises((ValueError, ProtocolError, OciError)):
        check("\n")
