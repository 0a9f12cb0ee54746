"""The connection budget's choices: which connection makes room, and when none may."""

from __future__ import annotations

import asyncio

from swarmpull.edges.listener import ConnectionBudget, budget_for


class Listener:
    def __init__(self) -> None:
        self.reading = True

    def stop_reading(self) -> None:
        self.reading = False

    def start_reading(self) -> None:
        self.reading = True


def open_conns(budget: ConnectionBudget, listener: Listener, now: float, n: int, closed: list[int]):
    conns = []
    for _ in range(n):
        i = len(closed) + len(conns) + 1000
        conn = budget.opened(listener, now, lambda i=i: closed.append(i))
        budget.attach(conn, i)
        conns.append((i, conn))
    return conns


def test_the_oldest_idle_connection_makes_room_and_a_busy_one_never():
    budget, listener, closed = ConnectionBudget(limit=3, grace=1.0), Listener(), []
    (a, _), (b, _), (c, _) = open_conns(budget, listener, 0.0, 3, closed)
    budget.begin(a, 0.5)  # a request is being handled on the oldest
    assert not budget.make_room(0.9)  # the others are too young to close
    assert budget.make_room(1.2)  # b: the oldest that never sent a request
    assert closed == [b] and budget.count == 2
    budget.opened(listener, 1.2, lambda: closed.append(-1))
    assert budget.make_room(1.5)  # c next; a stays, busy
    assert closed == [b, c]


def test_keep_alive_connections_go_after_those_that_never_sent_a_request():
    budget, listener, closed = ConnectionBudget(limit=2, grace=1.0), Listener(), []
    (a, _), (b, _) = open_conns(budget, listener, 0.0, 2, closed)
    budget.end(budget.begin(a, 0.1), 0.2)  # a served a request and waits for the next
    assert budget.make_room(5.0)
    assert closed == [b]


async def test_a_listener_without_room_stops_accepting_until_a_connection_closes():
    budget, listener, closed = ConnectionBudget(limit=1, grace=10.0), Listener(), []
    ((a, conn),) = open_conns(budget, listener, 0.0, 1, closed)
    assert not budget.make_room(0.5)
    budget.pause(listener, asyncio.get_running_loop())
    assert not listener.reading
    budget.closed(conn, a)
    assert listener.reading and budget.count == 0


def test_a_connection_that_sends_no_complete_header_in_time_is_closed():
    budget, listener, closed = ConnectionBudget(limit=10, header_timeout=20.0), Listener(), []
    (a, _), (b, _) = open_conns(budget, listener, 0.0, 2, closed)
    ((c, _),) = open_conns(budget, listener, 15.0, 1, closed)
    budget.begin(b, 1.0)  # b's request arrived: it is served however long it takes
    assert budget.sweep(19.0) == 0
    assert budget.sweep(21.0) == 1 and closed == [a]
    assert budget.sweep(36.0) == 1 and closed == [a, c]
    assert budget.count == 1 and budget.timed_out == 2


def test_the_budget_leaves_descriptors_for_files_and_outgoing_connections():
    assert budget_for(1024) == 768
    assert budget_for(1 << 20) == 3 << 18  # three quarters
    assert budget_for(800) == 800 - 256
    assert budget_for(100) == 16
