"""End-to-end fixtures: a real registry and real containerd instances, stopped after each
test. Missing binaries fail the test (CI must run these): scripts/bootstrap installs them."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.kit.services import Containerd, DockerRegistry


def require(*binaries: str) -> None:
    missing = [name for name in binaries if shutil.which(name) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found on PATH: scripts/bootstrap installs them")


@pytest.fixture
async def docker_registry(tmp_path) -> AsyncIterator[DockerRegistry]:
    """A started ``docker-registry`` on a free loopback port."""
    require("docker-registry")
    registry = DockerRegistry(tmp_path / "docker-registry")
    try:
        await registry.start()
        yield registry
    finally:
        await registry.stop()


@pytest.fixture
async def private_registry(tmp_path) -> AsyncIterator[DockerRegistry]:
    """A started ``docker-registry`` that lets in only ``alice`` (``registry.users``)."""
    require("docker-registry")
    registry = DockerRegistry(tmp_path / "private-registry", users={"alice": "alice-secret"})
    try:
        await registry.start()
        yield registry
    finally:
        await registry.stop()


@pytest.fixture
async def containerd_factory() -> AsyncIterator[Callable[[], Awaitable[Containerd]]]:
    """``await containerd_factory()`` starts one more independent containerd; all of them
    are stopped (and their directories removed) at teardown."""
    require("containerd", "ctr")
    started: list[Containerd] = []

    async def start() -> Containerd:
        instance = Containerd()
        started.append(instance)  # before start(): a half-started one is cleaned up too
        await instance.start()
        return instance

    try:
        yield start
    finally:
        await asyncio.gather(*(instance.stop() for instance in started))
