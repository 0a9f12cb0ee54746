"""The sans-IO piece scheduler (see ``scheduler.py``)."""

from supernode.scheduler.model import (
    Assignment,
    Decisions,
    Failure,
    FailureReason,
    SchedulerConfig,
    SourceState,
    Timing,
    UnknownPeer,
    UnknownTask,
)
from supernode.scheduler.scheduler import Scheduler

__all__ = [
    "Assignment",
    "Decisions",
    "Failure",
    "FailureReason",
    "Scheduler",
    "SchedulerConfig",
    "SourceState",
    "Timing",
    "UnknownPeer",
    "UnknownTask",
]
