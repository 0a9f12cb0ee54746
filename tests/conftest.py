"""Fixtures shared by every test: uvloop as the loop (as in the daemons), and a check
that no test leaves tasks running."""

from __future__ import annotations

import asyncio

import pytest
import uvloop


def pytest_asyncio_loop_factories(config, item):
    """Every async test runs on uvloop, as every daemon does."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(autouse=True)
async def no_tasks_left_running():
    """A test that leaves tasks running fails."""
    yield
    current = asyncio.current_task()
    for _ in range(20):  # cancelled tasks need a few turns of the loop to finish
        left = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        if not left:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"tasks left running: {left}")
