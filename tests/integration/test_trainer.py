"""The trainer against the real embedded broker and the real model: examples in → deltas and a
snapshot out that decode; a standby trainer takes over (checkpoint + versions continue)."""

from __future__ import annotations

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
from streamproc.settings import Settings
from streamproc.topics import Topics
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


def produce(settings: Settings, batches: list[ExampleBatch]) -> None:
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

    def __init__(self, settings: Settings) -> None:
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


def updates(settings: Settings) -> list[ModelUpdate]:
    return [ModelUpdate.decode(m.value) for m in read_all(settings, Topics.from_settings(settings).model_updates, idle_ms=1000)]


def test_examples_in_deltas_and_snapshot_out(settings: Settings, tmp_path: Path) -> None:
    s = Settings(**{**settings.__dict__, "checkpoint_dir": str(tmp_path / "ck"), "update_interval_ms": 50.0})
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
    ups = updates(s)
    deltas = [u for u in ups if u.header["kind"] == "delta"]
    snaps = [u for u in ups if u.header["kind"] == "snapshot"]
    assert deltas and snaps
    covered = [tuple(p[:2]) for d in deltas for p in d.header["published"]]
    assert len(covered) == 410 and covered[-1] == ("u2", "i35")  # e409: u(409 % 37), i(409 * 7 % 101)
    versions = [u.header["version"] for u in ups]
    assert versions == sorted(versions) and len(set(versions)) == len(deltas) + len({x.header["version"] for x in snaps})
    snap = snaps[0]
    assert snap.header["chunks"] == 1 and len(snap.header["user_ids"]) == 37 and len(snap.header["item_ids"]) == 101
    assert snap.tensors["user_factors"].shape == (37, s.factors)
    for d in deltas:
        assert d.header["base_version"] == d.header["version"] - 1
        assert set(d.header) >= {"global_mean", "newest_event_time", "newest_published", "offsets", "created"}
        assert set(d.tensors) == {"user_factors", "user_bias", "user_candidate_scores", "user_mf_gain", "item_factors", "item_bias", "item_popularity",
                                  "item_log_popularity", "item_feedback"}
        assert len(d.header["user_candidates"]) == len(d.header["user_ids"]) and d.header["ranking"]["knn"] > 0
    assert deltas[-1].header["offsets"] == {f"{Topics.from_settings(s).examples}:0": 11}
    ck = t.worker.store.latest()  # the shutdown checkpoint
    assert ck is not None and ck.offsets == deltas[-1].header["offsets"] and ck.version == versions[-1]
    assert sorted(t.worker.store.learned_ids()) == sorted(f"e{j}" for j in range(410))
    assert t.registry.get_sample_value("reco_trainer_examples_learned_total", {"kind": "click"}) == 137
    assert t.registry.get_sample_value("reco_trainer_prequential_rmse", {"window": "running"}) > 0


def test_standby_takes_over_when_the_active_trainer_stops(settings: Settings, tmp_path: Path) -> None:
    s = Settings(**{**settings.__dict__, "checkpoint_dir": str(tmp_path / "ck")})
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
    versions = [u.header["version"] for u in updates(s)]
    assert versions == sorted(versions)
    assert sorted(standby.worker.store.learned_ids()) == sorted(f"e{j}" for j in range(80))
