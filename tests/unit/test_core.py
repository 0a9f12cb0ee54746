"""Pure helpers of the shared core: units, digests, geometry, task ids, wire parsing."""

from __future__ import annotations

import pytest

from swarmpull.core.digest import Digest, DigestError
from swarmpull.core.fields import ProtocolError
from swarmpull.core.geometry import MAX_PIECE_SIZE, MIN_PIECE_SIZE, PieceGeometry, choose_piece_size
from swarmpull.core.protocol import (
    parse_open_task,
    parse_open_tasks,
    parse_peer_registration,
    parse_peer_report,
    parse_report_answer,
)
from swarmpull.core.tasks import check_upstream_url, redact_url, task_id_for
from swarmpull.core.units import parse_rate, parse_size
from swarmpull.edges.http import HostPort

HEX = "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("text", "size"),
    [("20GB", 20 * 10**9), ("4MiB", 4 << 20), ("512", 512), ("1.5kb", 1500), ("2 GiB", 2 << 30)],
)
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "rate"),
    [("50MB/s", 50 * 10**6), ("400Mbit/s", 50 * 10**6), ("1Gbit", 125 * 10**6), ("4MiB/s", 4 << 20)],
)
def test_rates(text, rate):
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["", "ten", "5 parsecs", "-1MB", "MB"])
def test_bad_sizes_say_what_is_expected(text):
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def test_digest_parsing():
    assert str(Digest.parse(f"sha256:{HEX}")) == f"sha256:{HEX}"
    with pytest.raises(DigestError, match="only sha256"):
        Digest.parse("sha512:" + "ab" * 64)
    with pytest.raises(DigestError, match="invalid digest"):
        Digest.parse(f"sha256:{HEX.upper()}")
    with pytest.raises(DigestError):
        Digest.parse("sha256:abc")


def test_piece_size_rule():
    assert choose_piece_size(0) == MIN_PIECE_SIZE
    assert choose_piece_size(100 << 20) == MIN_PIECE_SIZE
    assert choose_piece_size(1 << 30) == 4 << 20
    assert choose_piece_size(16 << 30) == MAX_PIECE_SIZE
    assert choose_piece_size(1 << 40) == MAX_PIECE_SIZE


def test_geometry():
    g = PieceGeometry(10, 4)
    assert g.count == 3
    assert [g.length(i) for i in range(3)] == [4, 4, 2]
    assert g.offset(2) == 8
    assert list(g.covering(3, 9)) == [0, 1, 2]
    assert list(g.covering(4, 8)) == [1]
    assert list(g.covering(5, 5)) == []
    assert PieceGeometry(0, 4).count == 0
    with pytest.raises(IndexError):
        g.length(3)
    with pytest.raises(ValueError):
        g.covering(0, 11)


def test_task_ids_key_by_content_when_the_digest_is_known():
    digest = Digest(HEX)
    assert task_id_for("http://a/x", digest) == task_id_for("http://b/y", digest) == f"sha256-{HEX}"
    assert task_id_for("http://a/x", None) != task_id_for("http://b/y", None)
    assert task_id_for("http://a/x", None).startswith("url-")


def test_urls():
    assert check_upstream_url("https://r.io/v2/x#frag") == "https://r.io/v2/x"
    for bad in ("ftp://x/y", "/relative", "http://", "http://h:notaport/x"):
        with pytest.raises(ValueError):
            check_upstream_url(bad)
    assert redact_url("https://user:pw@r.io:5000/p?token=secret") == "https://r.io:5000/p"


def test_hostport():
    assert HostPort.parse("127.0.0.1:80") == HostPort("127.0.0.1", 80)
    assert HostPort.parse("[::1]:9").url() == "http://[::1]:9"
    assert HostPort.parse(":9").is_wildcard
    with pytest.raises(ValueError):
        HostPort.parse("localhost")


def test_protocol_rejects_wrong_shapes_naming_the_field():
    with pytest.raises(ProtocolError, match="body must be a JSON object"):
        parse_peer_report([1, 2])
    with pytest.raises(ProtocolError, match="'have'"):
        parse_peer_report({"tasks": [{"task_id": f"sha256-{HEX}", "have": "not base64!"}]})
    with pytest.raises(ProtocolError, match="'reason'"):
        parse_peer_report(
            {"tasks": [{"task_id": f"sha256-{HEX}", "parents": [{"id": "p", "failures": 1, "reason": "x"}]}]}
        )
    with pytest.raises(ProtocolError, match="'drop'"):
        parse_peer_report({"tasks": [{"task_id": f"sha256-{HEX}", "drop": ["bad id/../"]}]})
    with pytest.raises(ProtocolError, match="'peer_id'"):
        parse_open_tasks({"peer_id": "bad id/../", "tasks": [{"url": "http://h/x"}]})
    with pytest.raises(ProtocolError, match="'tasks'"):
        parse_open_tasks({"peer_id": "p", "tasks": []})
    with pytest.raises(ProtocolError, match="'digest'"):
        parse_open_task({"peer_id": "p", "url": "http://h/x", "digest": "md5:abc"})
    with pytest.raises(ProtocolError, match="'url'"):
        parse_open_task({"peer_id": "p", "url": "file:///etc/passwd"})
    with pytest.raises(ProtocolError, match="header"):
        parse_open_task({"peer_id": "p", "url": "http://h/x", "headers": {"A": "x\r\nB: y"}})
    for address in (
        "nowhere",
        "http://h:1/path",
        "http://h:1/?q=1",
        "http://u:p@h:1",
        "http://h",
        "ftp://h:1",
    ):
        with pytest.raises(ProtocolError, match="'address'"):
            parse_peer_registration({"peer_id": "p", "address": address})
    with pytest.raises(ProtocolError, match="'address'"):
        parse_report_answer({"parents": [{"id": "s", "address": "http://evil:1/admin"}]})


def test_protocol_round_trip():
    report = parse_peer_report(
        {"tasks": [{"task_id": f"sha256-{HEX}", "have": "AQ==", "drop": ["a"], "bad": ["b"],
                    "parents": [{"id": "p1", "bytes": 10, "seconds": 0.5, "failures": 1,
                                 "reason": "corrupt"}]}],
         "dropped_tasks": [f"url-{HEX}"]}
    )  # fmt: skip
    assert parse_peer_report(report.to_json()) == report
    reg = parse_peer_registration(
        {"peer_id": "p", "address": "http://127.0.0.1:1/", "labels": {"zone": "a"},
         "holdings": [{"task_id": f"sha256-{HEX}", "size": 10, "piece_size": 4, "have": "BQ=="}]}
    )  # fmt: skip
    assert reg.address == "http://127.0.0.1:1" and reg.zone == "a" and reg.rack is None
    assert parse_peer_registration(reg.to_json()) == reg
    batch = parse_open_tasks(
        {"peer_id": "p", "tasks": [{"url": "http://h/x", "headers": {"Authorization": "Bearer t"}}]}
    )
    assert batch.tasks[0].peer_id == "p" and "Bearer t" not in repr(batch)
    assert parse_open_tasks(batch.to_json()) == batch


def test_progress_bar_draws_on_terminals_only():
    import io

    from swarmpull.edges.progress import ProgressBar

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        bar = ProgressBar("layer.tar", stream)
        bar.total = 4 << 20
        bar.advance(2 << 20)
        bar.finish()
    assert "layer.tar" in tty.getvalue() and "50%" in tty.getvalue() and "2.0 MiB/4.0 MiB" in tty.getvalue()
    assert pipe.getvalue() == ""
