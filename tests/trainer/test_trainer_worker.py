"""The trainer worker without a broker: update contents and versions, chunking, checkpoint/restore,
drift reaction, metrics. A tiny fake model stands in for HybridMF (same interface)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from support import FakeConsumer, cluster_topic_ids  # noqa: F401 - an autouse fixture

from streamproc.examples import KIND_CLICK, KIND_ITEM, KIND_RATING, ExampleBatch
from trainer.settings import TrainerSettings
from trainer.updates import ModelUpdate
from trainer.worker import TrainerWorker

K = 2


class FakeModel:
    def __init__(self) -> None:
        self.users: dict[str, int] = {}
        self.items: dict[str, int] = {}
        self.total, self.count = 0.0, 0
        self.touched_u: set[str] = set()
        self.touched_i: set[str] = set()
        self.drifts = 0

    @classmethod
    def from_settings(cls, settings: TrainerSettings) -> FakeModel:
        return cls()

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def learn_batch(self, batch: ExampleBatch) -> np.ndarray:
        preds = np.full(len(batch), self.total / max(self.count, 1), np.float32)
        for u, i, t in zip(batch.user_ids, batch.item_ids, batch.records["target"], strict=True):
            self.users.setdefault(u, len(self.users))
            self.items.setdefault(i, len(self.items))
            self.touched_u.add(u)
            self.touched_i.add(i)
            if t == t:
                self.total += float(t)
                self.count += 1
        return preds

    def export(self, full: bool, *, candidates: bool = True) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        us = sorted(self.users, key=self.users.get) if full else sorted(self.touched_u)
        its = sorted(self.items, key=self.items.get) if full else sorted(self.touched_i)
        self.touched_u, self.touched_i = set(), set()
        head = {"global_mean": self.total / max(self.count, 1), "user_ids": us, "item_ids": its}
        tensors = {"user_factors": np.ones((len(us), K), np.float32), "user_bias": np.zeros(len(us), np.float32),
                   "item_factors": np.ones((len(its), K), np.float32), "item_bias": np.zeros(len(its), np.float32),
                   "item_popularity": np.ones(len(its), np.float32)}
        return head, tensors

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"users": list(self.users), "items": list(self.items), "total": self.total, "count": self.count}, {
            "dummy": np.arange(3, dtype=np.float32)}

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> FakeModel:
        m = cls()
        m.users = {u: n for n, u in enumerate(meta["users"])}
        m.items = {i: n for n, i in enumerate(meta["items"])}
        m.total, m.count = meta["total"], meta["count"]
        assert arrays["dummy"].tolist() == [0.0, 1.0, 2.0]
        return m

    def on_drift(self) -> None:
        self.drifts += 1


class FakePrequential:
    def __init__(self) -> None:
        self.n = 0

    def update_batch(self, batch: ExampleBatch, preds: np.ndarray) -> None:
        self.n += len(batch)

    def get(self) -> dict[str, float]:
        return {"n": self.n, "rmse": 1.5, "rmse_recent": 1.25, "mae": 1.0, "mae_recent": 0.5,
                "ndcg_at_10": 0.2, "ndcg_at_10_recent": 0.3, "hit_rate_at_10": 0.4, "hit_rate_at_10_recent": float("nan")}

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"n": self.n}, {}

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> FakePrequential:
        p = cls()
        p.n = meta["n"]
        return p


class FakeDrift:
    def __init__(self, detector: str = "adwin") -> None:
        self.detector = detector

    def update_batch(self, batch: ExampleBatch, preds: np.ndarray) -> list[dict[str, Any]]:
        if "drifty" in batch.user_ids:
            return [{"signal": "rating", "index": 3, "evidence": {"mean_before": 4.0, "mean_after": 2.0}}]
        return []

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"detector": self.detector}, {}

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> FakeDrift:
        return cls(meta["detector"])


FAKES = (FakeModel, FakePrequential, FakeDrift)


class _Future:
    def __init__(self, offset: int = 0) -> None:
        self.offset = offset

    def get(self, timeout: float | None = None) -> _Future:
        return self  # kafka's RecordMetadata has the offset too


class FakeProducer:
    """Both of the trainer's producers: every message in order, and the topic each went to."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.topics: list[str] = []

    def send(self, topic: str, value: bytes) -> _Future:
        self.sent.append(value)
        self.topics.append(topic)
        return _Future(self.topics.count(topic) - 1)

    def flush(self, timeout: float | None = None) -> None:
        pass

    def updates(self) -> list[ModelUpdate]:
        return [ModelUpdate.decode(v) for v in self.sent]


def batch(n: int, *, start: int = 0, users: int = 3, items: int = 5, user: str | None = None) -> ExampleBatch:
    ids = range(start, start + n)
    return ExampleBatch.build(
        event_ids=[f"e{j}" for j in ids], user_ids=[user or f"u{j % users}" for j in ids],
        item_ids=[f"i{j % items}" for j in ids], kinds=[KIND_RATING if j % 2 else KIND_CLICK for j in ids],
        targets=[4.0 if j % 2 else float("nan") for j in ids], event_times=[1000.0 + j for j in ids],
        published=[2000.0 + j for j in ids], processed=[3000.0 + j for j in ids])


def make_worker(tmp_path: Path, **over: Any) -> tuple[TrainerWorker, FakeProducer, CollectorRegistry]:
    s = TrainerSettings(kafka_bootstrap="127.0.0.1:1", topic_prefix="t.", checkpoint_dir=str(tmp_path / "ck"), **over)
    reg = CollectorRegistry()
    w = TrainerWorker(s, registry=reg, classes=FAKES)
    prod = FakeProducer()
    w._producer = w._snap_producer = prod
    w._consumer = FakeConsumer()
    w.active = True
    return w, prod, reg


def test_delta_carries_touched_rows_published_and_versions(tmp_path: Path) -> None:
    w, prod, reg = make_worker(tmp_path)
    w.learn(batch(4))
    w._offsets = {"t.examples:0": 1}
    assert w.publish_delta() == 1
    w.learn(batch(1, start=10, users=100))
    w.publish_delta()
    d1, d2 = prod.updates()
    assert (d1.header.version, d1.header.base_version, d1.header.kind) == (1, 0, "delta")
    assert (d2.header.version, d2.header.base_version) == (2, 1)
    assert d1.header.published == [("u0", "i0", 2000.0), ("u1", "i1", 2001.0), ("u2", "i2", 2002.0), ("u0", "i3", 2003.0)]
    assert d1.header.newest_published == 2003.0 and d1.header.newest_event_time == 1003.0
    assert d1.header.offsets == {"t.examples:0": 1} and d1.header.created > 0
    assert d2.header.user_ids == ["u10"] and d2.header.item_ids == ["i0"]  # only the rows touched since
    assert set(prod.topics) == {"t.model-updates"}
    assert d2.tensors["user_factors"].shape == (1, K)
    assert w.publish_delta() == 0  # nothing new: nothing sent
    assert reg.get_sample_value("reco_trainer_updates_published_total", {"kind": "delta"}) == 2
    assert reg.get_sample_value("reco_trainer_model_version") == 2
    assert reg.get_sample_value("reco_trainer_examples_learned_total", {"kind": "rating"}) == 2
    assert reg.get_sample_value("reco_trainer_examples_learned_total", {"kind": "click"}) == 3
    assert reg.get_sample_value("reco_trainer_prequential_rmse", {"window": "recent"}) == 1.25
    assert reg.get_sample_value("reco_trainer_rows", {"table": "users"}) == 4


def test_delta_is_due_by_interval_or_example_count(tmp_path: Path) -> None:
    w, prod, _ = make_worker(tmp_path, update_interval_ms=60_000, update_max_examples=10)
    w._last_delta = float("inf")  # interval not yet passed
    w.learn(batch(9))
    assert not w._delta_due()
    w.learn(batch(1, start=9))
    assert w._delta_due()
    w2, _, _ = make_worker(tmp_path, update_interval_ms=1)
    assert not w2._delta_due()  # nothing pending
    w2.learn(batch(1))
    assert w2._delta_due()  # the interval has long passed: publish at once


def test_snapshot_is_chunked_to_fit_and_shares_one_version(tmp_path: Path) -> None:
    w, prod, reg = make_worker(tmp_path, max_message_bytes=10_000)
    w.learn(batch(3000, users=1500, items=900))
    assert w.publish_snapshot(wait=True) > 2
    ups = prod.updates()
    deltas = [u for u, t in zip(ups, prod.topics, strict=True) if t == "t.model-updates"]
    snaps = [u for u, t in zip(ups, prod.topics, strict=True) if t == "t.model-snapshots"]
    assert all(d.header.kind == "delta" for d in deltas) and all(s.header.kind == "snapshot" for s in snaps)
    assert len(deltas) >= 2  # the pending delta went first, split into consecutive versions
    assert [d.header.version for d in deltas] == list(range(1, len(deltas) + 1))
    assert [d.header.base_version for d in deltas] == list(range(0, len(deltas)))
    assert sum(len(d.header.published) for d in deltas) == 3000
    assert len(snaps) > 2 and all(len(v) <= 10_000 for v in prod.sent)
    # in sync: the snapshot holds what the deltas delivered, so it takes the last delta's version,
    # and names the model-updates offset where the deltas after it start
    assert {s.header.version for s in snaps} == {len(deltas)} and {s.header.deltas_from for s in snaps} == {len(deltas)}
    assert [s.header.chunk for s in snaps] == list(range(len(snaps))) and {s.header.chunks for s in snaps} == {len(snaps)}
    assert sum(len(s.header.user_ids) for s in snaps) == 1500 and sum(len(s.header.item_ids) for s in snaps) == 900
    assert reg.get_sample_value("reco_trainer_updates_published_total", {"kind": "snapshot"}) == len(snaps)
    assert w.last_snapshot["messages"] == len(snaps) and w.last_snapshot["stall_s"] >= 0
    w.learn(batch(2, start=5000))
    w.publish_delta()
    assert (prod.updates()[-1].header.version, prod.updates()[-1].header.base_version) == (len(deltas) + 1, len(deltas))


def test_checkpoint_restore_continues_versions_offsets_and_counts(tmp_path: Path) -> None:
    from kafka import TopicPartition

    w, prod, reg = make_worker(tmp_path)
    w.learn(batch(6))
    w._offsets = {"t.examples:0": 3}
    w.publish_delta()
    ck = w.checkpoint()
    assert ck is not None and ck.version == 1 and ck.info["examples_in_checkpoint"] == 6
    assert reg.get_sample_value("reco_trainer_last_checkpoint_timestamp_seconds") > 0
    assert w.store.learned_ids() == [f"e{j}" for j in range(6)]
    w.learn(batch(2, start=6))  # learned after the checkpoint: lost in a crash, re-learned later

    w2, prod2, reg2 = make_worker(tmp_path)
    w2.active = False
    w2._published_version = lambda: 5  # type: ignore[method-assign]  # the old one published up to v5
    tp = TopicPartition("t.examples", 0)
    w2._on_assigned([tp])
    assert w2.active and w2._consumer.seeks == {tp: 3}
    assert w2.version == 5 and w2.examples_learned == 6 and w2.prequential.n == 6
    assert w2.model.n_users == 3 and w2._need_snapshot
    assert reg2.get_sample_value("reco_trainer_active") == 1
    w2.learn(batch(2, start=20))
    w2.publish_delta()  # restored rows are not what replicas hold: a snapshot goes first, with a new version
    w2._snap_thread.join()
    assert prod2.topics[0] == "t.model-snapshots" and prod2.updates()[0].header.version == 6  # never reuses a version
    w2.learn(batch(2, start=30))
    w2.publish_delta()
    assert (prod2.updates()[-1].header.version, prod2.updates()[-1].header.base_version) == (7, 6)

    w3, _, _ = make_worker(tmp_path / "empty")
    w3.active = False
    w3._published_version = lambda: 0  # type: ignore[method-assign]
    w3._on_assigned([tp])
    assert w3._consumer.seeks == {tp: "beginning"} and w3.model is None


def test_drift_counts_logs_and_reacts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    w, _, reg = make_worker(tmp_path)
    w.learn(batch(2))
    w.learn(batch(2, user="drifty"))
    assert reg.get_sample_value("reco_trainer_drift_detections_total", {"signal": "rating"}) == 1
    assert w.model.drifts == 1
    assert any("drift detected: signal=rating" in r.message and "mean_after" in r.message for r in caplog.records)


def test_a_refused_update_does_not_stop_the_trainer_and_a_snapshot_repairs_it(tmp_path: Path) -> None:
    from kafka.errors import UnknownError

    class _Refused:
        def get(self, timeout: float | None = None) -> None:
            raise UnknownError("the broker came back with the topic recreated")

    w, prod, _ = make_worker(tmp_path)
    w.learn(batch(4))
    sent = prod.sent
    prod.send = lambda topic, value: (sent.append(value), _Refused())[1]  # type: ignore[method-assign]
    assert w.publish_delta() == 1  # no exception: the trainer keeps running
    assert w._need_snapshot and prod.updates()[-1].header.kind == "delta"
    prod.send = lambda topic, value: (sent.append(value), _Future())[1]  # type: ignore[method-assign]
    w._snapshot_not_before = 0.0  # the pause is over
    w._last_lag = float("inf")  # (no lag gauges from the fake consumer)
    w._learn_and_publish({})
    w._snap_thread.join()
    last = prod.updates()[-1]
    assert last.header.kind == "snapshot" and last.header.version > 1 and not w._need_snapshot


def test_catalogue_content_gives_no_freshness_sample(tmp_path: Path) -> None:
    w, prod, _ = make_worker(tmp_path)
    mixed = ExampleBatch.build(event_ids=["e0", "c1", "e2"], user_ids=["u0", "", "u2"], item_ids=["i0", "new-item", "i2"],
                               kinds=[KIND_RATING, KIND_ITEM, KIND_RATING], targets=[4.0, float("nan"), 3.0],
                               event_times=[1.0, 2.0, 3.0], published=[10.0, 20.0, 30.0], processed=[11.0, 21.0, 31.0])
    w.learn(mixed)
    w.publish_delta()
    (d,) = prod.updates()
    assert d.header.published == [("u0", "i0", 10.0), ("u2", "i2", 30.0)]  # no user "" for the catalogue record


def test_checkpoints_of_the_previous_format_still_load(tmp_path: Path) -> None:
    """Format 1 wrapped each component's state as {"form": "pair"|"dict", "meta": ...} (a "dict"
    state had no arrays); a trainer of this version restores from it and continues."""
    import json

    from kafka import TopicPartition

    w, _, _ = make_worker(tmp_path)
    w.learn(batch(6))
    w._offsets = {"t.examples:0": 3}
    w.publish_delta()
    w.erase("user", "gone", 2100.0)
    ck = w.checkpoint()
    assert ck is not None
    meta_path = ck.path / "meta.json"
    meta = json.loads(meta_path.read_text())
    assert meta["format"] == 2 and "form" not in meta["components"]["model"]
    meta["format"] = 1
    meta["components"] = {name: {"form": "dict" if name == "prequential" else "pair", "meta": m} for name, m in meta["components"].items()}
    meta_path.write_text(json.dumps(meta))

    w2, _, _ = make_worker(tmp_path)
    w2.active = False
    w2._published_version = lambda: 1  # type: ignore[method-assign]
    w2._on_assigned([TopicPartition("t.examples", 0)])
    assert w2.model.n_users == 3 and w2.prequential.n == 6 and w2.drift.detector == "adwin" and w2.examples_learned == 6
    assert w2._tombs == w._tombs and w2._salt == w._salt  # the erasure state (salt, tombstones) too
    ck2 = w2.checkpoint()
    assert ck2 is not None and json.loads((ck2.path / "meta.json").read_text())["format"] == 2


def test_recreated_examples_topic_is_read_from_its_start(tmp_path: Path, cluster_topic_ids: dict[str, str]) -> None:  # noqa: F811
    """A checkpoint keeps the examples topic's Kafka id with its offsets; when the topic was deleted and
    created again (new id) the offsets belong to the old topic, and the new one is read from its start."""
    from kafka import TopicPartition

    tp = TopicPartition("t.examples", 0)
    w, _, _ = make_worker(tmp_path)
    w.active = False
    w._published_version = lambda: 0  # type: ignore[method-assign]
    w._on_assigned([tp])
    w.learn(batch(6))
    w._offsets = {"t.examples:0": 3}
    ck = w.checkpoint()
    assert ck is not None and ck.info["topic_ids"]["t.examples"] == "examples-id-1"

    w2, _, reg2 = make_worker(tmp_path)
    w2.active = False
    w2._published_version = lambda: 0  # type: ignore[method-assign]
    w2._on_assigned([tp])  # the same topic: resume at the checkpoint's offset
    assert w2._consumer.seeks == {tp: 3} and reg2.get_sample_value("reco_trainer_recreated_topics_total") == 0

    cluster_topic_ids["t.examples"] = "examples-id-2"
    w3, _, reg3 = make_worker(tmp_path)
    w3.active = False
    w3._published_version = lambda: 0  # type: ignore[method-assign]
    w3._on_assigned([tp])
    assert w3._consumer.seeks == {tp: "beginning"} and "t.examples:0" not in w3._offsets
    assert reg3.get_sample_value("reco_trainer_recreated_topics_total") == 1
    assert w3.model.n_users == 3 and w3.examples_learned == 6  # the model itself is kept
    w3.learn(batch(2, start=10))
    w3._offsets["t.examples:0"] = 2
    ck3 = w3.checkpoint()
    assert ck3 is not None and ck3.info["topic_ids"]["t.examples"] == "examples-id-2"


def test_snapshots_wait_longer_when_they_cost_the_training_thread_more(tmp_path: Path) -> None:
    w, _, _ = make_worker(tmp_path, snapshot_interval_s=30.0)
    assert w.snapshot_wait_s() == 30.0  # no snapshot yet: the configured interval
    w.last_snapshot = {"stall_s": 0.2, "candidates_s": 0.6}
    assert w.snapshot_wait_s() == 30.0  # cheap: 30 x 0.8 s is below the interval
    w.last_snapshot = {"stall_s": 1.0, "candidates_s": 2.0}
    assert w.snapshot_wait_s() == 90.0
    w.last_snapshot = {"stall_s": 0.1, "candidates_s": 0.1, "send_s": 20.0}
    assert w.snapshot_wait_s() == 100.0  # the sending thread's time counts too (5x)
    w.last_snapshot = {"stall_s": 1.0, "candidates_s": 100.0}
    assert w.snapshot_wait_s() == w.topics.update_retention_ms / 3000 == 200.0  # a snapshot always within retention
    w._last_snapshot = time.monotonic() - 150.0
    assert not w._snapshot_due()
    w._last_snapshot -= 60.0
    assert w._snapshot_due()


def test_periodic_snapshots_wait_while_a_serving_replica_publishes_them(tmp_path: Path) -> None:
    """RECO_PUBLISH_SNAPSHOTS_S on a replica: the trainer skips its periodic snapshot while the newest
    on model-snapshots is a replica's younger than a third of the update topics' retention, looks
    again when that one is that old, and publishes its own when none younger came (or when the
    newest is its own, or unreadable)."""
    from trainer.updates import UpdateHeader

    w, _, _ = make_worker(tmp_path, snapshot_interval_s=30.0)
    cap = w.topics.update_retention_ms / 3000.0
    newest: list[UpdateHeader | None] = [None]
    w._newest_snapshot_header = lambda: newest[0]  # type: ignore[method-assign]
    w._last_snapshot = time.monotonic() - 31.0
    assert w._snapshot_due() and not w._snapshot_elsewhere()  # nothing there: the trainer publishes
    newest[0] = UpdateHeader(version=7, kind="snapshot", chunk=3, chunks=9, created=time.time() - 20.0, extra={"publisher": "serving"})
    assert w._snapshot_elsewhere()  # a replica's, being sent, 20 s old
    assert not w._snapshot_due()
    w._last_snapshot -= cap - 20.0 - 1.0
    assert not w._snapshot_due()  # the replica's is cap - 1 s old: not yet
    w._last_snapshot -= 2.0
    assert w._snapshot_due()
    newest[0] = UpdateHeader(version=9, kind="snapshot", created=time.time() - cap - 1.0, extra={"publisher": "serving"})
    assert not w._snapshot_elsewhere()  # the replica stopped: too old, the trainer publishes
    newest[0] = UpdateHeader(version=9, kind="snapshot", created=time.time() - 5.0)
    assert not w._snapshot_elsewhere()  # the trainer's own
    w._last_snapshot = time.monotonic() - 31.0
    assert w._snapshot_due()  # and its own interval applies again


def test_checkpoints_wait_longer_when_they_take_longer_to_write(tmp_path: Path) -> None:
    w, _, _ = make_worker(tmp_path, checkpoint_interval_s=10.0)
    w.learn(batch(4))
    w._last_ckpt = time.monotonic() - 11.0
    ck = w.checkpoint()
    assert ck is not None and w._ckpt_write_s >= 0
    w._ckpt_write_s = 3.5  # as at 1M users: the next one waits 70 s, not 10
    w._last_ckpt = time.monotonic() - 11.0
    assert not w._checkpoint_due()
    w._last_ckpt -= 50.0
    assert not w._checkpoint_due()
    w._last_ckpt -= 10.0
    assert w._checkpoint_due()


def test_a_snapshots_candidates_get_the_polls_spare_time_else_a_share_of_the_learning(tmp_path: Path) -> None:
    import trainer.worker as tw

    w, _, _ = make_worker(tmp_path)
    w._poll_s = 0.03  # the poll waited: the trainer had time to spare
    assert w._candidate_slice_s(0.01) == 0.03
    w._poll_s = 0.0  # records were waiting: a share of the turn's learning
    assert w._candidate_slice_s(0.08) == pytest.approx(tw._CANDIDATE_SHARE * 0.08)
    assert w._candidate_slice_s(10.0) == tw._CANDIDATE_SLICE_S

