"""Helpers the tests share (importable as ``support``: ``tests/`` is on the path through its
``conftest.py``). Test helpers live here, not in product code."""

from __future__ import annotations

from typing import Any

from streamproc.runtime import poll  # the one deadline-poll helper (raises TimeoutError naming what it waited for)

__all__ = ["poll", "FakeConsumer"]


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
