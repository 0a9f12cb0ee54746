"""The piece client's HTTP/1.1 head parser, fed what a hostile source might send."""

from __future__ import annotations

import pytest

from swarmpull.edges.transport.http1 import MAX_HEAD, WireError, head_end, parse_head, piece_request


def test_a_plain_answer_parses():
    head = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nX-Swarmpull-Map: AQ==\r\n\r\n")
    assert (head.status, head.content_length, head.keep_alive) == (200, 12, True)
    assert head.headers["x-swarmpull-map"] == "AQ=="
    assert not parse_head(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").keep_alive
    assert not parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive


@pytest.mark.parametrize(
    "raw",
    [
        b"garbage\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n folded: line\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1e3\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",  # no blank line
        b"HTTP/1.1 200 OK\r\n" + b"X: " + b"a" * MAX_HEAD + b"\r\n\r\n",
    ],
)
def test_malformed_heads_are_wire_errors(raw):
    with pytest.raises(WireError):
        parse_head(raw)


def test_the_same_length_twice_is_one_length():
    head = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n")
    assert head.content_length == 5


def test_head_end_and_requests():
    assert head_end(b"HTTP/1.1 200 OK\r\n\r\nbody", 23) == 19
    assert head_end(b"HTTP/1.1 200 OK\r\n\r", 18) == -1
    request = piece_request("h:1", "/pieces/t/1", {"A": "b"})
    assert request == b"GET /pieces/t/1 HTTP/1.1\r\nHost: h:1\r\nA: b\r\n\r\n"
    with pytest.raises(ValueError, match="line break"):
        piece_request("h", "/x", {"A": "b\r\nEvil: 1"})
