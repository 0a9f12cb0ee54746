"""The sans-IO parent scheduler (see ``scheduler.py``)."""

from supernode.scheduler.model import (
    Check,
    CheckKind,
    Events,
    Parent,
    ParentReport,
    SchedulerConfig,
    SeedId,
    SourceState,
    UnknownPeer,
    UnknownTask,
)
from supernode.scheduler.scheduler import Scheduler

__all__ = [
    "Check",
    "CheckKind",
    "Events",
    "Parent",
    "ParentReport",
    "Scheduler",
    "SchedulerConfig",
    "SeedId",
    "SourceState",
    "UnknownPeer",
    "UnknownTask",
]
