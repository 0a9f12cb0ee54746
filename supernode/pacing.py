"""How often peers call the supernode: its load stays flat however large the swarm.

Pure arithmetic on the supernode's configuration, shared by the service (which tells
peers in every answer) and the load-test simulator (which plays the peers).
"""

from __future__ import annotations

from supernode.config import SupernodeConfig


def report_interval(members: int, config: SupernodeConfig, draw: float) -> float:
    """Seconds until a member of a task with ``members`` members reports next: often
    enough that the supernode's picture of the swarm is fresh, rarely enough that all
    members together stay within ``report_rate``. ``draw`` (uniform in [0, 1)) spreads
    the members' reports over +-25 %, so they do not come in waves."""
    interval = min(config.report_max, max(config.report_min, members / config.report_rate))
    return round(interval * (0.75 + 0.5 * draw), 2)


def heartbeat_interval(peers: int, config: SupernodeConfig) -> float:
    """How often a peer without a control channel heartbeats: often enough to notice one
    gone within three intervals, rarely enough that all of them together stay within
    ``heartbeat_rate``."""
    interval = peers / config.heartbeat_rate
    return round(min(config.heartbeat_max, max(config.heartbeat_interval, interval)), 1)
