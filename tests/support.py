"""Helpers the tests share (importable as ``support``: ``tests/`` is on the path through its
``conftest.py``). Test helpers live here, not in product code."""

from __future__ import annotations

from streamproc.runtime import poll  # the one deadline-poll helper (raises TimeoutError naming what it waited for)

__all__ = ["poll"]
