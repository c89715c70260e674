"""The trainer against the real embedded broker and the real model: examples in → deltas and a
snapshot out that decode; a standby trainer takes over (checkpoint + versions continue)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from support import poll  # the one deadline-poll helper (raises TimeoutError)

from streamproc.examples import KIND_CLICK, KIND_RATING, ExampleBatch
from streamproc.kafka import client_config, read_all
from streamproc.topics import Topics
from trainer.settings import TrainerSettings
from trainer.updates import ModelUpdate
from trainer.worker import TrainerWorker

pytestmark = pytest.mark.integration


def make_batch(start: int, n: int) -> ExampleBatch:
    ids = range(start, start + n)
    now = time.time()
    return ExampleBatch.build(
        event_ids=[f"e{j}" for j in ids], user_ids=[f"u{j % 37}" for j in ids], item_ids=[f"i{(j * 7) % 101}" for j in ids],
        kinds=[KIND_CLICK if j % 3 == 0 else KIND_RATING for j in ids],
        targets=[float("nan") if j % 3 == 0 else float(1 + j % 5) for j in ids],
        event_times=[now - 5 for _ in ids], published=[now - 1 for _ in ids], processed=[now for _ in ids])


def produce(settings: TrainerSettings, batches: list[ExampleBatch]) -> None:
    from kafka import KafkaProducer

    p = KafkaProducer(**client_config(settings))
    for b in batches:
        p.send(Topics.from_settings(settings).examples, b.encode())
    p.flush()
    p.close()


def wait_for(cond: Callable[[], Any], what: str, timeout: float = 90.0) -> Any:
    return poll(cond, timeout, what, 0.05)


class Running:
    """A TrainerWorker in a thread with its own registry."""

    def __init__(self, settings: TrainerSettings) -> None:
        self.registry = CollectorRegistry()
        self.worker = TrainerWorker(settings, registry=self.registry)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.worker.run(self.stop)
        except BaseException as exc:  # noqa: BLE001
            self.error = exc

    def close(self) -> None:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive() and self.error is None, self.error


def updates(settings: TrainerSettings) -> list[ModelUpdate]:
    """The deltas (model-updates topic)."""
    return [ModelUpdate.decode(m.value) for m in read_all(settings, Topics.from_settings(settings).model_updates, idle_ms=1000)]


def snapshots(settings: TrainerSettings) -> list[ModelUpdate]:
    """The snapshots' chunks (model-snapshots topic)."""
    return [ModelUpdate.decode(m.value) for m in read_all(settings, Topics.from_settings(settings).model_snapshots, idle_ms=1000)]


def test_examples_in_deltas_and_snapshot_out(settings: TrainerSettings, tmp_path: Path) -> None:
    s = dataclasses.replace(settings, checkpoint_dir=str(tmp_path / "ck"), update_interval_ms=50.0)
    produce(s, [make_batch(n * 40, 40) for n in range(10)])
    t = Running(s)
    try:
        wait_for(lambda: t.worker.examples_learned >= 400, "400 examples learned")
        wait_for(lambda: t.registry.get_sample_value("reco_trainer_updates_published_total", {"kind": "snapshot"}), "a snapshot")
        assert t.registry.get_sample_value("reco_trainer_active") == 1
        produce(s, [make_batch(400, 10)])  # a late batch: its delta comes promptly
        wait_for(lambda: t.worker.examples_learned >= 410, "the late batch learned")
    finally:
        t.close()
    deltas, snaps = updates(s), snapshots(s)
    assert deltas and snaps
    assert all(d.header.kind == "delta" for d in deltas) and all(x.header.kind == "snapshot" for x in snaps)
    covered = [tuple(p[:2]) for d in deltas for p in d.header.published]
    assert len(covered) == 410 and covered[-1] == ("u2", "i35")  # e409: u(409 % 37), i(409 * 7 % 101)
    versions = [u.header.version for u in deltas]
    assert versions == list(range(1, len(deltas) + 1))
    snap = snaps[0]
    assert snap.header.chunks == 1 and len(snap.header.user_ids) == 37 and len(snap.header.item_ids) == 101
    assert snap.tensors["user_factors"].shape == (37, s.factors)
    for x in snaps:  # in sync with the deltas: a snapshot takes the version of the delta before it ...
        assert x.header.version in versions
        # ... and names where the deltas after it start: the first one there builds on the snapshot
        after = [d for n, d in enumerate(deltas) if n >= x.header.deltas_from]
        assert not after or after[0].header.base_version == x.header.version
    for d in deltas:
        assert d.header.base_version == d.header.version - 1 and d.header.global_mean is not None and d.header.created > 0
        assert set(d.tensors) == {"user_factors", "user_bias", "user_candidates", "user_candidate_scores", "user_mf_gain", "item_factors",
                                  "item_bias", "item_popularity", "item_log_popularity", "item_feedback"}
        cands = d.tensors["user_candidates"]
        assert cands.shape[0] == len(d.header.user_ids) and d.header.ranking is not None and d.header.ranking.knn > 0
        assert d.header.candidate_item_ids is not None and set(d.header.candidate_item_ids) <= {f"i{j}" for j in range(101)}
        assert sorted(set(cands[cands >= 0].tolist())) == list(range(len(d.header.candidate_item_ids)))  # each id used, none twice
    assert deltas[-1].header.offsets == {f"{Topics.from_settings(s).examples}:0": 11}
    ck = t.worker.store.latest()  # the shutdown checkpoint
    assert ck is not None and ck.offsets == deltas[-1].header.offsets and ck.version == versions[-1]
    assert sorted(t.worker.store.learned_ids()) == sorted(f"e{j}" for j in range(410))
    assert t.registry.get_sample_value("reco_trainer_examples_learned_total", {"kind": "click"}) == 137
    assert t.registry.get_sample_value("reco_trainer_prequential_rmse", {"window": "running"}) > 0


def test_standby_takes_over_when_the_active_trainer_stops(settings: TrainerSettings, tmp_path: Path) -> None:
    s = dataclasses.replace(settings, checkpoint_dir=str(tmp_path / "ck"))
    a = Running(s)
    wait_for(lambda: a.worker.active, "the first trainer active")
    b = Running(s)
    try:
        produce(s, [make_batch(0, 50)])
        wait_for(lambda: a.worker.examples_learned + b.worker.examples_learned >= 50, "first examples learned")
        # the group is stable: both joined, exactly one owns the partition (either may, after the join)
        wait_for(lambda: a.worker.assignments and b.worker.assignments and a.worker.active != b.worker.active,
                 "one active trainer and one standby")
        first, standby = (a, b) if a.worker.active else (b, a)
        assert standby.registry.get_sample_value("reco_trainer_active") == 0
        v_before = first.worker.version
        first.close()  # clean stop: final delta + checkpoint, leaves the group
        produce(s, [make_batch(50, 30)])
        wait_for(lambda: standby.worker.active, "the standby to take over", timeout=60)
        wait_for(lambda: standby.worker.examples_learned >= 80, "the standby learning where the first stopped")
        assert standby.worker.examples_learned == 80  # restored 50 from the checkpoint, learned 30: none twice
        assert standby.worker.prequential.get()["n_ratings"] + standby.worker.prequential.get()["n_clicks"] == 80
        wait_for(lambda: standby.worker.version > v_before, "versions continuing")
    finally:
        for r in (a, b):
            if r.thread.is_alive():
                r.close()
    versions = [u.header.version for u in updates(s)]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    # the standby restored a checkpoint: its first update is a snapshot with a version of its own
    assert any(x.header.version > v_before for x in snapshots(s))
    assert sorted(standby.worker.store.learned_ids()) == sorted(f"e{j}" for j in range(80))
