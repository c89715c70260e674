"""Benchmarks of the streamproc package: ``reco bench ingest``, ``reco bench publish`` (:mod:`.ingest`)
and ``reco bench encoder`` (:mod:`.encoder`). Registered through the ``reco.commands`` entry point
``streamproc-bench``; nothing in the product imports them."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add this package's benchmarks to ``reco bench``."""
    from streamproc.bench import encoder, ingest

    ingest.register_bench(bench)
    encoder.register_bench(bench)
