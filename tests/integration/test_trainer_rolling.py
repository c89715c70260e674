"""A rolling update: a new trainer joins (standby) and the old one is stopped while the group is
still rebalancing. The new one must take over and continue from the old one's final checkpoint."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from streamproc.settings import Settings

sys.path.insert(0, str(Path(__file__).parent))
from test_trainer import Running, make_batch, produce, wait_for  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_stop_during_a_rebalance_still_hands_over(settings: Settings, tmp_path: Path) -> None:
    s = dataclasses.replace(settings, checkpoint_dir=str(tmp_path / "ck"))
    old = Running(s)
    try:
        wait_for(lambda: old.worker.active, "the old trainer active")
        produce(s, [make_batch(0, 40)])
        wait_for(lambda: old.worker.examples_learned >= 40, "the old trainer learning")
        new = Running(s)
        wait_for(lambda: new.worker._consumer is not None, "the new trainer joining")
        old.close()  # SIGTERM-equivalent while the new member's join is in flight
        produce(s, [make_batch(40, 20)])
        wait_for(lambda: new.worker.active and new.worker.examples_learned >= 60, "the new trainer taking over", timeout=90)
        assert new.worker.examples_learned == 60 and new.worker.version > old.worker.version - 1
    finally:
        for r in (old, locals().get("new")):
            if r is not None and r.thread.is_alive():
                r.close()
    assert sorted(new.worker.store.learned_ids()) == sorted(f"e{j}" for j in range(60))
