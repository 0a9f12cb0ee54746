"""The dashboard's pure parts: what reports add up to, one replica's survey, the merge of
several replicas, and the operator's token and sessions."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from supernode.dashboard.auth import UiAuth, read_token
from supernode.dashboard.merge import History, merge
from supernode.dashboard.survey import Survey
from supernode.dashboard.traffic import Traffic
from supernode.dashboard.web import PATHS, Dashboard
from supernode.scheduler import Scheduler, SchedulerConfig
from swarmpull.core.bitfield import full
from swarmpull.core.protocol import ParentStats

TOKEN = "0123456789abcdef0123456789abcdef"


def test_reports_add_up_to_bytes_down_up_and_by_source():
    traffic = Traffic("seed")
    traffic.reported("t1", "a", [ParentStats("seed", 100), ParentStats("b", 50), ParentStats("c", 0)])
    traffic.reported("t1", "b", [ParentStats("a", 30)])
    traffic.reported("t2", "a", [ParentStats("b", 20, failures=1)])
    assert traffic.down == {"a": 170, "b": 30}
    assert traffic.up == {"b": 70, "a": 30}  # the seed's uploads are the seed's, not a node's
    assert (traffic.from_seed, traffic.from_peers) == (100, 100)
    assert traffic.by_task == {"t1": 180, "t2": 20}
    traffic.forget(keep_nodes={"a"}, keep_tasks={"t2"})
    assert (traffic.down, traffic.up, traffic.by_task) == ({"a": 170}, {"a": 30}, {"t2": 20})
    assert traffic.from_peers == 100  # totals keep what departed nodes moved
    traffic.reported("t3", "z", [ParentStats("a", 5)])
    traffic.tidy(100.0, lambda: ["a", "z"], lambda: ["t2", "t3"])
    traffic.tidy(130.0, lambda: ["a"], lambda: ["t2"])  # within a minute of the last: not yet
    assert "z" in traffic.down and "t3" in traffic.by_task
    traffic.tidy(161.0, lambda: ["a"], lambda: ["t2"])
    assert (set(traffic.down), set(traffic.by_task)) == ({"a"}, {"t2"})


def swarm() -> tuple[Scheduler, dict]:
    """A task of 4 pieces: a done, b halfway, c nothing yet; b degraded by... nothing."""
    sched = Scheduler(SchedulerConfig(), random.Random(1))
    sched.add_seed("seed")
    for peer, rack in (("a", "r1"), ("b", "r1"), ("c", "r2")):
        sched.peer_joined(peer, 0.0, serves=True, zone="z", rack=rack)
    sched.add_task("t1", 4, "seed")
    for piece in range(4):
        sched.piece_seeded("t1", piece)
    sched.join("t1", "a", full(4), 0.0)
    sched.join("t1", "b", 0b0011, 0.0)
    sched.join("t1", "c", 0, 0.0)
    blob = SimpleNamespace(
        meta=SimpleNamespace(size=4096, piece_size=1024), geometry=SimpleNamespace(count=4)
    )
    blob.verified_count = 4
    task = SimpleNamespace(
        id="t1", url="http://registry/v2/app/blobs/x?token=secret", digest=None,
        state=SimpleNamespace(value="seeded"), blob=blob, error=None,
    )  # fmt: skip
    return sched, {"t1": task}


def test_a_survey_counts_members_and_moves_only_with_reports():
    sched, tasks = swarm()
    traffic = Traffic("seed")
    upstream = [4096.0]
    survey = Survey("http://sn1", sched, lambda: tasks, traffic, lambda: upstream[0], {"a"}.__contains__)
    first = survey.take(at=1000.0, monotonic=10.0, detail=False)
    assert first["nodes"] is None  # nobody watches: no node rows
    (row,) = first["tasks"]
    assert (row["members"], row["done"], row["pieces"], row["seeded"]) == (3, 1, 4, 4)
    assert "downloading" not in row
    assert row["url"] == "http://registry/v2/app/blobs/x"  # never the query (credentials)

    traffic.reported("t1", "b", [ParentStats("seed", 2048), ParentStats("a", 1024)])
    upstream[0] = 6144.0
    second = survey.take(at=1002.0, monotonic=12.0, detail=True)
    assert second["rates"] == {"from_peers": 512.0, "from_seed": 1024.0, "registry": 1024.0}
    (row,) = second["tasks"]
    assert (row["downloading"], row["waiting"]) == (1, 1)  # b holds some, c none
    assert (row["bytes_per_second"], row["pieces_per_second"]) == (1536.0, 1.5)
    nodes = {n["id"]: n for n in second["nodes"]}
    assert set(nodes) == {"a", "b", "c"}
    assert (nodes["b"]["down"], nodes["a"]["up"], nodes["a"]["down"]) == (3072, 1024, 0)
    assert nodes["b"]["down_rate"] is None  # no detailed survey before this one to compare with
    assert (nodes["a"]["tasks"], nodes["a"]["tasks_done"], nodes["a"]["parents"]) == (1, 1, [])
    assert nodes["c"]["parents"] and nodes["c"]["rack"] == "r2" and nodes["c"]["state"] == "active"
    assert (nodes["a"]["channel"], nodes["c"]["channel"]) == (True, False)  # a's channel is open here

    traffic.reported("t1", "b", [ParentStats("a", 1024)])
    third = survey.take(at=1003.0, monotonic=13.0, detail=True)
    nodes = {n["id"]: n for n in third["nodes"]}
    assert (nodes["b"]["down_rate"], nodes["a"]["up_rate"]) == (1024.0, 1024.0)


def view(replica, tasks, nodes, peers=3, **totals):
    base = {"from_peers": 0, "from_seed": 0, "registry": 0}
    return {
        "replica": replica, "at": 1000.0, "peers": peers,
        "totals": base | totals, "rates": base | {k: v / 10 for k, v in totals.items()},
        "tasks": tasks, "nodes": nodes,
    }  # fmt: skip


def test_replicas_views_merge_into_one_cluster():
    one = view(
        "http://sn1",
        [{"id": "t1", "members": 2, "done": 1}],
        [{"id": "a", "zone": "z", "rack": None, "state": "active", "tasks": 1, "tasks_done": 1,
          "down": 100, "up": 0, "down_rate": 1.0, "up_rate": None, "parents": ["seed"], "channel": "yes"}],
        from_peers=100, registry=1000,
    )  # fmt: skip
    two = view(
        "http://sn2",
        [{"id": "t2", "members": 2, "done": 0}, {"id": "t1", "members": 1, "done": 0}],
        [{"id": "a", "zone": None, "rack": "r1", "state": "quarantined", "tasks": 1, "tasks_done": 0,
          "down": 50, "up": 10, "down_rate": 2.0, "up_rate": 3.0, "parents": ["b", "seed"],
          "channel": True}],
        from_seed=2000,
    )  # fmt: skip
    cluster = merge([one, two, "garbage", {"tasks": "no"}, {"tasks": [{"no id": 1}], "nodes": [7]}])
    assert cluster["replicas"] == ["None", "http://sn1", "http://sn2"]
    assert cluster["totals"] == {"from_peers": 100.0, "from_seed": 2000.0, "registry": 1000.0}
    assert cluster["saved"] == {"received": 2100.0, "bytes": 1100.0}
    assert [(t["id"], t["members"]) for t in cluster["tasks"]] == [("t1", 2), ("t2", 2)]
    (node,) = cluster["nodes"]
    assert (node["down"], node["up"], node["tasks"], node["tasks_done"]) == (150, 10, 2, 1)
    assert (node["zone"], node["rack"], node["state"]) == ("z", "r1", "quarantined")
    assert node["parents"] == ["seed", "b"]
    assert node["channel"] is True  # open at sn2 (sn1's "yes" is no answer)
    assert cluster["peers"] == 1
    history = History(size=2)
    for _ in range(3):
        history.add(cluster)
    assert len(history.points) == 2
    assert history.points[-1]["done"] == 1 and history.points[-1]["members"] == 4


def test_without_node_rows_the_peer_count_is_the_largest_replica_count():
    cluster = merge([view("a", [], None, peers=5), view("b", [], None, peers=7)])
    assert cluster["nodes"] is None and cluster["peers"] == 7


def test_the_token_and_sessions():
    now = [1000.0]
    auth = UiAuth(TOKEN, session_seconds=60, wall_clock=lambda: now[0])
    assert auth.token_ok(TOKEN)
    assert not auth.token_ok(TOKEN[:-1]) and not auth.token_ok("") and not auth.token_ok(TOKEN + "x")
    assert auth.allows(f"Bearer {TOKEN}", None) and auth.allows(f"bearer  {TOKEN} ", None)
    assert not auth.allows(f"Basic {TOKEN}", None)
    assert not auth.allows("Bearer nope", auth.new_session())  # a wrong header is not saved by a cookie
    session = auth.new_session()
    assert auth.allows(None, session)
    expires, mac = session.split(".")
    assert not auth.allows(None, f"{int(expires) + 3600}.{mac}")  # a later expiry is not signed
    assert not auth.allows(None, f"{expires}.{mac[:-1]}0")
    assert not auth.allows(None, "garbage") and not auth.allows(None, None)
    assert not auth.allows(None, f"\u00b2.{mac}")  # a digit to isdigit(), not to int(): a 500 before
    assert not UiAuth("f" * 32).session_ok(session)  # a new token ends every session
    now[0] += 61
    assert not auth.allows(None, session)
    assert TOKEN not in repr(auth)


def test_a_token_must_be_long_enough_and_is_read_from_its_file(tmp_path, caplog):
    for bad in ("short", "has a space in it ok?", "x" * 5000):
        with pytest.raises(ValueError, match="openssl rand -hex 32"):
            UiAuth(bad)
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}\n")
    path.chmod(0o644)
    assert read_token(path) == TOKEN
    assert "chmod 600" in caplog.text
    with pytest.raises(ValueError, match="cannot read the dashboard token"):
        read_token(tmp_path / "missing")


def test_the_paths_left_open_to_browsers_under_mutual_tls_are_the_dashboards():
    assert {route.path for route in Dashboard(None, None).routes()} == set(PATHS)
