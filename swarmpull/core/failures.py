"""Why a piece transfer failed: one type, from the transport that sees it, through the
wire protocol, to the scheduler that acts on it."""

from __future__ import annotations

import enum


class FailureReason(enum.Enum):
    """Why a piece transfer failed, as the requester reports it."""

    CORRUPT = "corrupt"  # the bytes did not match the piece's sha256
    UNREACHABLE = "unreachable"  # connection refused, reset or DNS failure
    TIMEOUT = "timeout"  # the source stalled, or missed the transfer's deadline
    SLOW = "slow"  # its bytes came, too slowly to finish by the deadline (measured, not load)
    MISSING = "missing"  # the source does not hold the piece (404)
    BUSY = "busy"  # the source refused: its upload slots are full
    ERROR = "error"  # anything else
