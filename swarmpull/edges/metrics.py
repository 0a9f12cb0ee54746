"""Prometheus metrics: one registry per daemon instance (many peers share a process in
the load test), exposed at ``/metrics``."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


def metrics_route(registry: CollectorRegistry) -> web.RouteDef:
    async def handle(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return web.get("/metrics", handle)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The current value of one sample (0 when absent): for tests and reports."""
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value
