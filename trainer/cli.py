"""``reco`` commands contributed by the trainer package."""

from __future__ import annotations

import argparse

from trainer.bench import register_bench


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add ``reco trainer`` and ``reco bench trainer``."""
    register_bench(bench)
