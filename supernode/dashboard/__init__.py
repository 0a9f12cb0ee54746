"""The live dashboard at ``/ui/``: what the swarm is doing, for operators.

``traffic`` counts what nodes report; ``survey`` reads one replica's state once a tick;
``merge`` makes the cluster of every replica's survey and keeps its history; ``feed``
runs the tick and hands each open page the latest view; ``auth`` and ``web`` are the
operator's token and the routes; ``static/`` the page itself (no build step, no library).
"""

from supernode.dashboard.auth import UiAuth, read_token
from supernode.dashboard.feed import DashboardFeed
from supernode.dashboard.survey import Survey
from supernode.dashboard.traffic import Traffic
from supernode.dashboard.web import PATHS, Dashboard

__all__ = ["PATHS", "Dashboard", "DashboardFeed", "Survey", "Traffic", "UiAuth", "read_token"]
