"""Benchmarks of the serving package (``reco bench serving|freshness|scale|shards|erasure``), one
module each; registered through the ``reco.commands`` entry point ``serving-bench``, never imported
by the product. :class:`SyntheticModel` (the update generator the serving tests share) is
re-exported here."""

from __future__ import annotations

import argparse

from serving.bench.synthetic import SyntheticModel

__all__ = ["SyntheticModel", "register"]


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add the serving benchmarks to ``reco bench``."""
    from serving.bench import erasure, freshness, http, scale, shards

    for module in (http, freshness, scale, shards, erasure):
        module.register_bench(bench)
