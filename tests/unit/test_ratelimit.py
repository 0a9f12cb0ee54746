"""The rate limiter in virtual time: rates that hold over every 2-second window."""

from __future__ import annotations

import asyncio

import pytest

from peer.slots import DownloadSlots
from swarmpull.core.rates import Priority, TokenBucket
from swarmpull.edges.ratelimit import RateLimiter
from tests.kit.clocks import VirtualTime

CHUNK = 64 * 1024


def test_bucket_lets_a_taker_overdraw_and_makes_the_next_wait():
    bucket = TokenBucket(rate=1000, burst=100, now=0.0)
    assert bucket.delay(0.0) == 0
    bucket.take(400, 0.0)  # 100 saved up, 300 of debt
    assert bucket.delay(0.0) == pytest.approx(0.3)
    assert bucket.delay(0.3) == pytest.approx(0.0, abs=1e-6)
    assert bucket.delay(10.0) == 0  # idle time saves at most the burst
    bucket.take(100, 10.0)
    assert bucket.delay(10.0) > 0


def windows(grants: list[tuple[float, int]], width: float) -> list[float]:
    """Bytes granted in every window [t, t + width) that starts at a grant."""
    return [sum(n for s, n in grants if t <= s < t + width) for t, _ in grants]


@pytest.mark.parametrize("transfers", [1, 4, 32])
async def test_rate_holds_over_every_two_second_window_whatever_the_concurrency(transfers):
    vt = VirtualTime()
    rate = 1_000_000
    limiter = RateLimiter(rate, vt.clock, vt.sleep)
    grants: list[tuple[float, int]] = []
    total = 8_000_000

    async def transfer(size: int) -> None:
        for _ in range(size // CHUNK):
            await limiter.acquire(CHUNK)
            grants.append((vt.clock.now, CHUNK))

    start = vt.clock.now
    await vt.run(*(transfer(total // transfers) for _ in range(transfers)))
    sent = sum(n for _, n in grants)
    elapsed = vt.clock.now - start
    assert sent / elapsed == pytest.approx(rate, rel=0.05)  # no time lost either
    busiest = max(windows(grants, 2.0))
    assert busiest <= 2.0 * rate * 1.10
    steady = [w for (t, _), w in zip(grants, windows(grants, 2.0), strict=True) if t <= vt.clock.now - 2.0]
    assert min(steady) >= 2.0 * rate * 0.90


async def test_foreground_goes_before_background():
    vt = VirtualTime()
    limiter = RateLimiter(100_000, vt.clock, vt.sleep)
    order: list[str] = []

    async def transfer(name: str, priority: Priority, chunks: int, delay: float = 0.0) -> None:
        await vt.sleep(delay)
        for _ in range(chunks):
            await limiter.acquire(CHUNK, priority)
            order.append(name)

    await vt.run(
        transfer("bg", Priority.BACKGROUND, 10),
        transfer("fg", Priority.FOREGROUND, 5, delay=1.0),  # arrives while bg is queued
    )
    first_fg = order.index("fg")
    assert order[first_fg : first_fg + 5] == ["fg"] * 5  # once it came, it went first
    assert order.count("bg") == 10


async def test_a_cancelled_waiter_does_not_stall_the_queue():
    vt = VirtualTime()
    limiter = RateLimiter(100_000, vt.clock, vt.sleep)
    await limiter.acquire(200_000)  # deep in debt: the next taker must wait two seconds
    doomed = asyncio.ensure_future(limiter.acquire(CHUNK))
    await asyncio.sleep(0)
    doomed.cancel()

    async def later() -> float:
        await limiter.acquire(CHUNK)
        return vt.clock.now

    (when,) = await vt.run(later())
    debt = 200_000 - 16_384  # the burst of a 100 kB/s limiter is 16 KiB
    assert when == pytest.approx(1000.0 + debt / 100_000, abs=0.001)  # not a moment later


async def test_unlimited_never_waits():
    limiter = RateLimiter(None)
    for _ in range(1000):
        await limiter.acquire(1 << 20)


async def test_background_downloads_wait_for_foreground_ones():
    slots = DownloadSlots(1)
    slots.take()
    fg = asyncio.ensure_future(slots.wait_free(Priority.FOREGROUND))
    await asyncio.sleep(0)
    assert slots.free(Priority.BACKGROUND) == 0
    slots.release()
    assert slots.free(Priority.BACKGROUND) == 0  # the foreground waiter is first
    await fg
    assert slots.free(Priority.BACKGROUND) == 1
