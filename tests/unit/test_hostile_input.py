"""Input the fuzzing of the APIs (tests/integration/test_fuzz.py) found, or made us look
for: each refused at the edge with a ProtocolError, or taken as its document says."""

from __future__ import annotations

import pytest

from swarmpull.core.digest import Digest, DigestError
from swarmpull.core.fields import ProtocolError, at_source, parse_address, parse_peer_id
from swarmpull.core.protocol import parse_headers, parse_open_task, parse_peer_registration, parse_peer_report
from swarmpull.core.tasks import check_upstream_url, validate_task_id

HEX = "0123456789abcdef" * 4
TASK = f"sha256-{HEX}"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"peer_id": "p", "labels": False}, "labels"),
        ({"peer_id": "p", "labels": []}, "labels"),
        ({"peer_id": "p", "holdings": False}, "holdings"),
        ({"peer_id": "p", "holdings": {}}, "holdings"),
    ],
)
def test_a_registration_with_a_wrong_type_for_an_optional_field_is_refused(body, field):
    """It was read as "none" (``or {}``), so the wrong shape went through unnoticed."""
    with pytest.raises(ProtocolError, match=field):
        parse_peer_registration(body)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body"),
        (0, "body"),
        ("", "body"),
        ({"tasks": False}, "tasks"),
        ({"dropped_tasks": 0}, "dropped_tasks"),
        ({"tasks": [{"task_id": TASK, "parents": False}]}, "parents"),
        ({"tasks": [{"task_id": TASK, "drop": ""}]}, "drop"),
        ({"tasks": [{"task_id": TASK, "bad": False}]}, "bad"),
        ({"dropped_tasks": False}, "dropped_tasks"),
        ({"tasks": [{"task_id": TASK, "parents": [{"id": "p\n"}]}]}, "id"),
    ],
)
def test_a_report_with_a_wrong_type_is_refused(body, field):
    with pytest.raises(ProtocolError, match=field):
        parse_peer_report(body)


def test_absent_and_null_optional_fields_are_empty():
    reg = parse_peer_registration({"peer_id": "p", "labels": None, "holdings": None, "address": None})
    assert reg.holdings == [] and reg.zone is None
    assert parse_peer_report(None).tasks == []
    assert parse_peer_report({"tasks": None, "dropped_tasks": None}).dropped_tasks == []
    assert parse_open_task({"peer_id": "p", "url": "http://h/x", "headers": None}).headers == {}
    with pytest.raises(ProtocolError, match="headers"):
        parse_open_task({"peer_id": "p", "url": "http://h/x", "headers": []})


def test_an_integer_written_as_a_whole_float_is_that_integer():
    """JSON has one kind of number: the documents' "integer" includes 8.0."""
    assert parse_peer_registration({"peer_id": "p", "upload_slots": 8.0}).upload_slots == 8
    with pytest.raises(ProtocolError, match="upload_slots"):
        parse_peer_registration({"peer_id": "p", "upload_slots": 8.5})
    (task,) = parse_peer_report({"tasks": [{"task_id": TASK, "parents": [{"id": "p", "bytes": 8.0}]}]}).tasks
    assert task.parents[0].bytes == 8 and type(task.parents[0].bytes) is int


@pytest.mark.parametrize("have", ["A", "AB", "ABC", "AAAA=", "A===", "AAAA\n"])
def test_a_bitfield_must_be_whole_base64(have):
    with pytest.raises(ProtocolError, match="have"):
        parse_peer_report({"tasks": [{"task_id": TASK, "have": have}]})


def test_a_trailing_newline_is_not_part_of_a_valid_id():
    """Python's ``$`` matches before a final newline: "p\\n" passed as a peer id (into
    logs), a task id or a digest with a newline passed too."""
    with pytest.raises(ProtocolError):
        parse_peer_id("p\n")
    with pytest.raises(ValueError):
        validate_task_id(TASK + "\n")
    with pytest.raises(DigestError):
        Digest.parse(f"sha256:{HEX}\n")
    with pytest.raises(ProtocolError, match="peer_id"):
        parse_peer_registration({"peer_id": "p\n"})


@pytest.mark.parametrize(
    "host", ["\u3002", "\ud800", "a b", "a..b", "\x00", "-" * 64 + ".example", "ex\u00e4mple.com"]
)
def test_an_upstream_or_peer_address_needs_a_real_host(host):
    """An HTTP client cannot use these (the seed retried "\u3002" four times, then sent
    peers to read it themselves), or would look them up as garbage names."""
    with pytest.raises(ValueError, match="host"):
        check_upstream_url(f"http://{host}/blob")
    with pytest.raises(ProtocolError, match="address"):
        parse_address(f"http://{host}:7001")


@pytest.mark.parametrize(
    "url",
    [
        "http://registry-1.docker.io/v2/x",
        "https://my_registry:5000/x",
        "http://[::1]:80/x",
        "http://xn--zca.de/",
    ],
)
def test_real_hosts_pass(url):
    assert check_upstream_url(url) == url


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Token": "a\x00b"},
        {"X-Token": "\x1b[0m"},
        {"X-Token": "\x7f"},
        {"host": "evil"},
        {"RANGE": "bytes=1-"},
    ],
)
def test_headers_for_the_upstream_have_no_control_characters_and_frame_nothing(headers):
    """A NUL made the seed's read of the upstream crash; a Range, Accept-Encoding or
    Content-Length of a client's would change what the seed reads for everyone."""
    with pytest.raises(ProtocolError, match="header"):
        parse_headers(headers)


def test_ordinary_headers_pass():
    headers = {"Authorization": "Bearer abc.def", "X-Note": "tab\there, caf\u00e9"}
    assert parse_headers(headers) == headers


@pytest.mark.parametrize(
    "address, source, expected",
    [
        ("https://10.9.9.9:65002", "192.0.2.7", "https://192.0.2.7:65002"),
        ("http://node-17.example.net:4000", "192.0.2.7", "http://192.0.2.7:4000"),
        ("http://192.0.2.7:4000", "::ffff:192.0.2.7", "http://192.0.2.7:4000"),
        ("http://[2001:db8::1]:4000", "2001:db8::9", "http://[2001:db8::9]:4000"),
        ("http://127.0.0.1:4000", "fe80::1%eth0", "http://[fe80::1]:4000"),
    ],
)
def test_a_node_is_reached_at_its_source_and_its_own_port(address, source, expected):
    assert at_source(parse_address(address), source) == expected


@pytest.mark.parametrize("source", [None, "", "not an address", "/run/unix.sock"])
def test_a_registration_of_unknown_source_is_refused(source):
    with pytest.raises(ProtocolError, match="came from is unknown"):
        at_source("http://192.0.2.7:4000", source)


@pytest.mark.parametrize("source", ["127.0.0.1", "::1", "::ffff:127.0.0.1", "127.9.9.9", "0.0.0.0", "::"])
def test_a_registration_from_the_supernodes_own_host_names_no_node(source):
    # A node beside the supernode, or a proxy in front of it: its loopback ports are the
    # supernode's (Redis, say), not a node's. Only a cluster on one host takes them.
    with pytest.raises(ProtocolError, match="--node-addresses advertised"):
        at_source("http://192.0.2.7:6379", source)
    if source not in ("0.0.0.0", "::"):
        assert at_source("http://192.0.2.7:6379", source, loopback=True).endswith(":6379")


def test_a_task_named_many_times_is_named_once():
    # A heartbeat naming one task 50,000 times was as many events for another replica's
    # inbox in Redis (three commands each), and as many departures (attack round 9).
    task = "sha256-" + "ab" * 32
    other = "sha256-" + "cd" * 32
    report = parse_peer_report({"tasks": [], "dropped_tasks": [task, other] * 1000})
    assert report.dropped_tasks == [task, other]
    holding = {"task_id": task, "size": 10, "piece_size": 10}
    reg = parse_peer_registration(
        {"peer_id": "p", "address": None, "holdings": [{**holding, "have": ""}, {**holding, "have": "gA=="}]}
    )
    assert [(h.task_id, h.have) for h in reg.holdings] == [(task, "gA==")]
