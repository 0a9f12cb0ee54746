"""The daemons' loop handler: uvloop's false alarm about a closed TLS socket goes to the
debug log, every other loop error still to the error log."""

from __future__ import annotations

import logging

import uvloop

from swarmpull.edges.daemon import quiet_closed_tls

CLOSED = RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")


def _errors(caplog, context: dict) -> list[logging.LogRecord]:
    loop = uvloop.new_event_loop()
    try:
        quiet_closed_tls(loop)
        with caplog.at_level(logging.DEBUG):
            caplog.clear()
            loop.call_exception_handler(context)
        return [r for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        loop.close()


def test_a_write_to_a_closed_tls_socket_is_not_an_error(caplog):
    assert _errors(caplog, {"message": "Fatal error on SSL protocol", "exception": CLOSED}) == []
    assert any("TLS connection closed" in r.getMessage() for r in caplog.records)


def test_other_loop_errors_are_still_errors(caplog):
    for context in (
        {"message": "Fatal error on SSL protocol", "exception": ValueError("bad record")},
        {"message": "Task exception was never retrieved", "exception": CLOSED},
        {"message": "Exception in callback", "exception": KeyError("x")},
    ):
        (record,) = _errors(caplog, context)
        assert record.getMessage() == context["message"]
