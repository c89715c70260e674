"""Helpers the tests share (importable as ``support``: ``tests/`` is on the path through its
``conftest.py``). Test helpers live here, not in product code."""

from __future__ import annotations

from typing import Any

import pytest

from streamproc.runtime import poll  # the one deadline-poll helper (raises TimeoutError naming what it waited for)

__all__ = ["poll", "FakeConsumer", "cluster_topic_ids"]


class FakeConsumer:
    """The part of a Kafka consumer a trainer worker's unit tests see: seeks and commits recorded."""

    def __init__(self) -> None:
        self.seeks: dict[Any, Any] = {}
        self.committed: Any = None

    def seek(self, tp: Any, offset: int) -> None:
        self.seeks[tp] = offset

    def seek_to_beginning(self, *tps: Any) -> None:
        for tp in tps:
            self.seeks[tp] = "beginning"

    def commit_async(self, offsets: Any) -> None:
        self.committed = offsets


@pytest.fixture(autouse=True)
def cluster_topic_ids(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The Kafka topic ids a trainer worker's unit tests' (absent) broker reports; a test changes
    one to recreate that topic. Autouse where imported: the real lookup would wait for a broker."""
    ids = {"t.examples": "examples-id-1", "t.control": "control-id-1"}
    monkeypatch.setattr("trainer.worker.topic_ids", lambda settings, topics, **kw: {t: ids[t] for t in topics if t in ids})
    return ids
