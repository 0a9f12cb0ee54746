"""Which sources are degraded for slowness: far slower than the others, as measured by
more than one requester."""

from __future__ import annotations

from supernode.scheduler.speed import MAX_REQUESTERS, MIB, SpeedTracker


def healthy(tracker: SpeedTracker, sources: int = 6, requesters=("r1", "r2")) -> None:
    for i in range(sources):
        for requester in requesters:
            for _ in range(3):
                tracker.report(f"s{i}", requester, MIB, 1.0)


def test_a_source_two_requesters_measure_far_slower_is_degraded():
    tracker = SpeedTracker(witnesses=2)
    healthy(tracker)
    assert not any(tracker.degraded(f"s{i}") for i in range(6))
    tracker.report("s0", "r1", MIB, 30.0)
    assert not tracker.degraded("s0")  # r2 still sees it at 1 s per MiB
    tracker.report("s0", "r2", MIB, 30.0)
    tracker.report("s0", "r2", MIB, 30.0)
    assert tracker.degraded("s0")
    assert not tracker.degraded("s1")


def test_one_requester_cannot_degrade_a_source_however_slow_it_says_it_was():
    tracker = SpeedTracker(witnesses=2)
    healthy(tracker)
    for _ in range(20):  # a liar: a byte in a month, over and over
        tracker.report("s0", "liar", 1, 86400.0 * 30)
    assert not tracker.degraded("s0")
    assert not any(tracker.degraded(f"s{i}") for i in range(1, 6))


def test_a_source_with_one_requester_is_not_judged():
    tracker = SpeedTracker(witnesses=2)
    healthy(tracker, requesters=("r1",))
    tracker.report("slow", "r1", MIB, 1.0)
    for _ in range(10):
        tracker.report("slow", "r1", MIB, 100.0)
    assert not tracker.degraded("slow")  # one witness: no verdict either way


def test_the_latest_requesters_are_kept():
    tracker = SpeedTracker(witnesses=2)
    healthy(tracker)
    for i in range(MAX_REQUESTERS + 4):  # many requesters found s0 healthy, long ago
        tracker.report("s0", f"old{i}", MIB, 1.0)
    for requester in ("r1", "r2"):  # now two find it crawling
        for _ in range(10):
            tracker.report("s0", requester, MIB, 60.0)
    assert tracker.degraded("s0")
