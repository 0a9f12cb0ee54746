"""Swarm events: the writer (one per file, bounded, whole lines) and the report made from
events files."""

from __future__ import annotations

import json

import pytest

from loadtest.replay import MAX_LINE, Replay, summarize
from swarmpull.core.events import NO_EVENTS, Tagged
from swarmpull.edges.events import EventLog, EventLogBusy


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_events_are_written_as_json_lines_stamped_with_their_writer(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(path, wall_clock=lambda: 1000.5)
    await log.start()
    peer = Tagged(log, "peer", "node7")
    peer.emit(
        "piece_finished", task="sha256-ab", piece=3, source="seed", seed=True, bytes=65536, seconds=0.25
    )
    await log.stop()
    await log.stop()  # safe twice
    first, event = lines(path)
    assert first == {"t": 1000.5, "event": "log_opened", "schema": 1, "pid": first["pid"]}
    assert event == {
        "t": 1000.5, "event": "piece_finished", "role": "peer", "node": "node7",
        "task": "sha256-ab", "piece": 3, "source": "seed", "seed": True, "bytes": 65536, "seconds": 0.25,
    }  # fmt: skip
    assert log.written == 2 and log.dropped == 0


async def test_a_second_writer_of_the_same_file_is_refused(tmp_path):
    path = tmp_path / "events.jsonl"
    first = EventLog(path)
    await first.start()
    try:
        with pytest.raises(EventLogBusy, match="another process writes events"):
            await EventLog(path).start()
    finally:
        await first.stop()
    second = EventLog(path)  # the lock went with the first writer
    await second.start()
    await second.stop()
    assert [e["event"] for e in lines(path)] == ["log_opened", "log_opened"]


async def test_a_full_buffer_drops_events_and_counts_them(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(path, capacity=10, flush_interval=3600)
    await log.start()
    for i in range(25):  # no turn of the loop in between: nothing was written yet
        log.emit("piece_failed", piece=i)
    assert log.dropped == 16  # the log_opened event took one place of ten
    await log.stop()
    written = lines(path)
    assert [e["piece"] for e in written if e["event"] == "piece_failed"] == list(range(9))
    assert written[-1]["event"] == "events_dropped" and written[-1]["count"] == 16


def test_without_events_nothing_is_built():
    silent = Tagged(NO_EVENTS, "supernode", "http://sn")
    assert not silent.enabled
    silent.emit("peer_joined", peer="p")  # goes nowhere, raises nothing
    with pytest.raises(ValueError):
        Tagged(NO_EVENTS, "registry", "x")


def peer_event(t, kind, node, task="sha256-a", **fields):
    return {"t": t, "event": kind, "role": "peer", "node": node, "task": task, **fields}


def test_the_report_from_events_counts_what_the_load_test_counts(tmp_path):
    supernode = [
        {"t": 100.0, "event": "log_opened", "schema": 1},
        {
            "t": 100.5,
            "event": "upstream_read",
            "role": "supernode",
            "node": "sn",
            "task": "sha256-a",
            "bytes": 600,
        },
        {
            "t": 101.0,
            "event": "upstream_read",
            "role": "supernode",
            "node": "sn",
            "task": "sha256-a",
            "bytes": 400,
        },
        {"t": 101.5, "event": "quarantined", "role": "supernode", "node": "sn", "peer": "n3"},
    ]
    peers = [
        peer_event(100.0, "task_opened", "n1"),
        peer_event(100.6, "piece_finished", "n1", piece=0, source="seed", seed=True, bytes=600),
        peer_event(101.2, "piece_finished", "n1", piece=1, source="seed", seed=True, bytes=400),
        peer_event(102.0, "task_finished", "n1", ok=True, size=1000),
        peer_event(100.5, "task_opened", "n2"),
        peer_event(101.4, "piece_finished", "n2", piece=0, source="n1", seed=False, bytes=600),
        peer_event(101.6, "piece_failed", "n2", piece=1, source="n3", reason="corrupt"),
        peer_event(101.7, "fallback", "n2", reason="no supernode answers"),
        peer_event(102.5, "upstream_read", "n2", bytes=400),
        peer_event(104.5, "task_finished", "n2", ok=True, size=1000),
        peer_event(100.0, "task_opened", "n3"),
        peer_event(103.0, "task_finished", "n3", ok=False, error="cancelled"),
    ]
    (tmp_path / "sn.jsonl").write_text("".join(json.dumps(e) + "\n" for e in supernode))
    (tmp_path / "peers.jsonl").write_text(
        "".join(json.dumps(e) + "\n" for e in peers)
        + '{"t": 1, "event": "piece_fin\n'  # cut short by a full disk
        + "not json\n"
        + "[1, 2]\n"
        + '{"t": "yesterday", "event": "task_opened"}\n'
        + json.dumps({"t": 1.0, "event": "x", "pad": "a" * MAX_LINE})
        + "\n"
        + '{"t": 105, "event": "events_dropped", "count": 3}\n'
        + '{"t": 106, "event": "events_dropped", "count": 5}\n'  # running totals of one writer
    )
    result = summarize([tmp_path / "sn.jsonl", tmp_path / "peers.jsonl"])
    assert (result.nodes, result.completed, result.failed) == (3, 2, 1)
    assert result.completion_times == [pytest.approx(2.0), pytest.approx(4.0)]
    assert result.image_size == 1000
    assert result.registry_egress == 1400  # the supernode's reads and n2's direct one
    assert result.egress_timeline == [(0.0, 0), (0.5, 600), (1.0, 1000), (2.5, 1400)]
    assert result.sources == {"peer": 600.0, "seed": 1000.0, "upstream": 400.0}
    assert result.wall_time == pytest.approx(4.5)
    assert result.extra["malformed lines"] == 5
    assert result.extra["events dropped by writers"] == 5
    assert result.extra["fallbacks to the registry"] == 1
    assert result.extra["piece failures"] == 1
    assert result.extra["peers quarantined"] == 1
    assert result.extra["supernodes"] == 1


def test_a_node_that_failed_a_blob_then_got_it_completed():
    replay = Replay()
    for event in (
        peer_event(10.0, "task_opened", "n1"),
        peer_event(11.0, "task_finished", "n1", ok=False, error="upstream 503"),
        peer_event(12.0, "task_opened", "n1"),
        peer_event(13.0, "task_finished", "n1", ok=True, size=10),
    ):
        assert replay.add(event)
    result = replay.result()
    assert (result.completed, result.failed, result.completion_times) == (1, 0, [3.0])
    assert result.egress_ratio == 0.0  # nothing read from a registry


def test_events_summarize_prints_the_report_and_fails_when_a_node_did(tmp_path, capsys):
    from swarmpull.app.cli import main

    path = tmp_path / "peers.jsonl"
    events = [
        peer_event(10.0, "task_opened", "n1"),
        peer_event(10.5, "piece_finished", "n1", piece=0, source="seed", seed=True, bytes=10),
        peer_event(11.0, "task_finished", "n1", ok=True, size=10),
        peer_event(10.0, "task_opened", "n2"),
        peer_event(12.0, "task_finished", "n2", ok=False, error="upstream 503"),
    ]
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    report = tmp_path / "report.json"
    assert main(["events", "summarize", str(path), "--json", str(report)]) == 1  # n2 failed
    out, err = capsys.readouterr()
    assert "events" in out and str(report.resolve()) in err
    (result,) = json.loads(report.read_text())["results"]
    assert (result["nodes"], result["completed"], result["failed"]) == (2, 1, 1)
    assert result["bytes_by_source"]["seed"] == 10

    path.write_text("".join(json.dumps(e) + "\n" for e in events[:3]))
    assert main(["events", "summarize", str(path)]) == 0
    assert main(["events", "summarize", str(tmp_path / "missing.jsonl")]) == 1
    assert "missing.jsonl" in capsys.readouterr().err


def test_a_load_test_does_not_mix_its_events_with_an_earlier_run(tmp_path, capsys):
    from swarmpull.app.cli import main

    (tmp_path / "supernode.jsonl").write_text("")
    assert main(["loadtest", "--nodes", "2", "--events-dir", str(tmp_path)]) == 1
    assert "earlier run" in capsys.readouterr().err
