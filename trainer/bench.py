"""``reco bench trainer``: the online model against river on the same stream."""

from __future__ import annotations

import argparse


def register_bench(bench: argparse._SubParsersAction) -> None:
    """Add ``reco bench trainer`` (filled in by the model work)."""
