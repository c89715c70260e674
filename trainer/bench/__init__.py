"""Benchmarks of the trainer package, one module each: ``reco bench trainer`` (:mod:`.learn`),
``quality`` (:mod:`.quality`), ``updates`` (:mod:`.updates`), ``feedback`` (:mod:`.feedback`).
Registered through the ``reco.commands`` entry point ``trainer-bench``; never imported by the
product."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add the trainer benchmarks to ``reco bench``."""
    from trainer.bench import feedback, learn, quality, updates

    for module in (learn, quality, updates, feedback):
        module.register_bench(bench)
