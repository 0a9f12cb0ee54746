"""The supernode's memory of URLs that lied about a blob (sans-IO, time passed in)."""

from __future__ import annotations

import pytest

from supernode.blame import MAX_URLS_PER_TASK, BlameBook, BlameConfig
from supernode.config import SupernodeConfig


def test_a_blamed_url_is_refused_for_that_blob_only_until_it_expires():
    book = BlameBook(BlameConfig(ttl=100.0))
    book.blame("sha256-a", "http://liar.example/v2/x/blobs/a?sig=1", now=0.0)
    assert book.refused("sha256-a", "http://liar.example/v2/x/blobs/a?sig=2", now=50.0)  # query ignored
    assert book.refused("sha256-a", "http://user:pw@liar.example/v2/x/blobs/a", now=50.0)
    assert not book.refused("sha256-b", "http://liar.example/v2/x/blobs/a", now=50.0)  # another blob
    assert not book.refused("sha256-a", "http://honest.example/v2/x/blobs/a", now=50.0)
    assert not book.refused("sha256-a", "http://liar.example/v2/x/blobs/a", now=100.0)
    assert len(book) == 0  # forgotten once expired


def test_the_book_stays_bounded():
    book = BlameBook(BlameConfig(ttl=100.0, limit=3))
    for i in range(10):
        book.blame(f"sha256-{i}", "http://liar.example/x", now=float(i))
    assert len(book) == 3
    assert book.refused("sha256-9", "http://liar.example/x", now=10.0)
    assert not book.refused("sha256-0", "http://liar.example/x", now=10.0)  # the oldest went first
    for i in range(MAX_URLS_PER_TASK + 5):
        book.blame("sha256-9", f"http://liar{i}.example/x", now=10.0 + i)
    assert not book.refused("sha256-9", "http://liar0.example/x", now=40.0)
    assert book.refused("sha256-9", f"http://liar{MAX_URLS_PER_TASK + 4}.example/x", now=40.0)


def test_blame_outlasts_a_failed_task():
    with pytest.raises(ValueError, match="blame"):
        SupernodeConfig(failed_task_ttl=60.0, blame=BlameConfig(ttl=30.0))


def test_a_poisoned_read_is_remembered_for_the_ttl_within_the_limit():
    book = BlameBook(BlameConfig(ttl=10.0, limit=2))
    book.poison("sha256-a", now=0.0)
    assert book.poisoned("sha256-a", now=5.0) and not book.poisoned("sha256-b", now=5.0)
    assert not book.poisoned("sha256-a", now=10.0)
    for task in ("sha256-a", "sha256-b", "sha256-c"):
        book.poison(task, now=20.0)
    assert not book.poisoned("sha256-a", now=21.0)  # past the limit: the oldest forgotten
    assert book.poisoned("sha256-c", now=21.0)
