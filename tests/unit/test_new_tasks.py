"""A peer's budget of new tasks (no I/O)."""

from __future__ import annotations

import pytest

from supernode.new_tasks import MAX_PEERS, NewTaskBudget, TooManyTasks


def test_a_burst_then_a_rate_per_peer():
    budget = NewTaskBudget(burst=3, rate=0.5)
    for _ in range(3):
        budget.take("a", 100.0)
    with pytest.raises(TooManyTasks) as refused:
        budget.take("a", 100.0)
    assert refused.value.retry_after == 2  # one task every two seconds
    budget.take("b", 100.0)  # another peer has its own
    with pytest.raises(TooManyTasks):
        budget.take("a", 101.0)  # half a task refilled
    budget.take("a", 102.0)
    budget.take("a", 1000.0)  # refilled to the burst, not past it
    budget.take("a", 1000.0)
    budget.take("a", 1000.0)
    with pytest.raises(TooManyTasks):
        budget.take("a", 1000.0)


def test_the_buckets_kept_are_bounded():
    budget = NewTaskBudget(burst=1, rate=1.0)
    for i in range(MAX_PEERS + 10):
        budget.take(f"p{i}", 0.0)
    assert len(budget._buckets) == MAX_PEERS
    budget.take("p0", 0.0)  # forgotten: a full bucket again
