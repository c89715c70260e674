"""Operating the whole loop on one machine: the supervisor behind ``reco up`` and ``reco demo``
(:mod:`.loop`) and the fault harness behind ``reco bench faults`` and the fault tests
(:mod:`.faults`). Registered through the ``reco.commands`` entry point ``serving-ops``; never
imported by the product."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add ``reco up``, ``reco demo`` and ``reco bench faults``."""
    from serving.ops import faults, loop

    loop.register(commands, bench)
    faults.register_bench(bench)
