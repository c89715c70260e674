"""``reco up`` / ``reco demo`` / ``reco bench freshness``: the whole loop on one machine."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add the loop commands to ``reco``."""
