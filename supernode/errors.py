"""Every error the service raises, as the status and JSON body an API client acts on."""

from __future__ import annotations

from typing import Any

from supernode.capabilities import PullDenied
from supernode.cluster import ClusterUnavailable, NotOwner
from supernode.new_tasks import TooManyTasks
from supernode.scheduler import SeedId, UnknownPeer, UnknownTask
from supernode.seed_task import ShuttingDown, TaskFailed
from swarmpull.core.fields import ProtocolError
from swarmpull.core.protocol import error_body
from swarmpull.core.registry_questions import NotAnswered, RegistryRefused

KNOWN = (
    ProtocolError,
    UnknownPeer,
    SeedId,
    UnknownTask,
    NotOwner,
    ClusterUnavailable,
    ShuttingDown,
    TooManyTasks,
    TaskFailed,
    PullDenied,
    RegistryRefused,
    NotAnswered,
)


def error_of(exc: Exception) -> tuple[int, dict[str, Any], dict[str, str]]:
    """``(status, body, headers)`` for an error the service raised."""
    if isinstance(exc, ProtocolError):
        return exc.status, error_body(exc.code, str(exc)), {}
    if isinstance(exc, SeedId):
        return 400, error_body("BAD_REQUEST", f"{exc.args[0]!r} is the seed's id, never a peer's"), {}
    if isinstance(exc, UnknownPeer):
        return 404, error_body("UNKNOWN_PEER", f"peer {exc.args[0]} is not registered"), {}
    if isinstance(exc, UnknownTask):
        return 404, error_body("UNKNOWN_TASK", f"task {exc.args[0]} is not known here"), {}
    if isinstance(exc, NotOwner):
        return 421, error_body("NOT_OWNER", str(exc), owner=exc.owner), {}
    if isinstance(exc, ClusterUnavailable):
        return 503, error_body("CLUSTER_UNAVAILABLE", str(exc)), {"Retry-After": "1"}
    if isinstance(exc, ShuttingDown):
        return 503, error_body("SHUTTING_DOWN", "this supernode is stopping"), {"Retry-After": "1"}
    if isinstance(exc, TooManyTasks):
        return 429, error_body("TOO_MANY_TASKS", str(exc)), {"Retry-After": str(int(exc.retry_after))}
    if isinstance(exc, PullDenied):
        return 403, error_body("PULL_DENIED", str(exc), upstream_status=exc.status), {}
    if isinstance(exc, TaskFailed) and exc.refused:
        return 403, error_body("UPSTREAM_REFUSED", str(exc)), {}
    if isinstance(exc, TaskFailed):
        headers = {"X-Upstream-Status": str(exc.status)} if exc.status else {}
        body = error_body("UPSTREAM_ERROR", str(exc), direct=exc.direct, upstream_status=exc.status)
        return 502, body, headers
    if isinstance(exc, RegistryRefused):  # the registry's answer for this node's credential
        body = error_body(
            "REGISTRY_REFUSED", str(exc), status=exc.status, oci_code=exc.code, challenge=exc.challenge
        )
        return 502, body, {}
    if isinstance(exc, NotAnswered):  # the node asks the registry itself
        return 503, error_body("NOT_ANSWERED", str(exc)), {}
    raise exc
