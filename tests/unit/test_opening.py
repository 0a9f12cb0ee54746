"""A download's open, fed scripted supernode answers: what ends in a direct read from the
registry, what waits for the supernodes, what fails the pull."""

from __future__ import annotations

import asyncio

import pytest

from peer.config import PeerConfig
from peer.download import DownloadContext, TaskDownload
from peer.link import LinkError, SupernodeUnavailable
from swarmpull.core.blobs import BlobRequest, DownloadFailed
from swarmpull.core.clock import SystemClock
from swarmpull.core.digest import Digest
from swarmpull.core.events import NO_EVENTS


class ScriptedControl:
    """Answers each open with the next of ``answers`` (an exception is raised)."""

    def __init__(self, answers: list[Exception]) -> None:
        self.answers = answers
        self.opens = 0

    async def open(self, req: object, timeout: float) -> object:
        self.opens += 1
        raise self.answers.pop(0)


def download(tmp_path, control: ScriptedControl) -> TaskDownload:
    config = PeerConfig(data_dir=tmp_path, supernodes=("http://127.0.0.1:9",), direct_jitter=0.0)
    ctx = DownloadContext(
        config, "node0", None, None, None, control, None, SystemClock(), None, asyncio.Semaphore(1), NO_EVENTS
    )  # type: ignore[arg-type]  # only the open is driven here
    return TaskDownload(ctx, BlobRequest("http://127.0.0.1:9/v2/a/blobs/x", Digest.of(b"x")))


async def test_an_answer_after_an_outage_is_handled_like_any_other(tmp_path):
    """No supernode answered; the retry's answer is that the task's owner is moving (a
    replica died, its lease not lapsed yet). That is waited for, not a crash of the
    download (which sent the node's proxy to the registry, a stampede in a 100-node surge
    whose owner replica was killed while Redis restarted)."""
    control = ScriptedControl(
        [
            SupernodeUnavailable("redis unreachable"),
            LinkError(421, "NOT_OWNER", "the task's owner keeps moving"),
            LinkError(403, "PULL_DENIED", "no pull rights", upstream_status=401),
        ]
    )
    with pytest.raises(DownloadFailed) as failed:
        await download(tmp_path, control)._open_or_fall_back()
    assert failed.value.denied  # the third answer decided, after the wait for the owner
    assert control.opens == 3
