"""Erasure in the trainer worker, with the real model and no broker: rows gone, the next delta,
snapshot and checkpoint free of the id (checked on the bytes), late examples of the erased id
dropped, later ones a fresh profile, tombstones surviving checkpoint/restore, bad control records
dead-lettered."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from support import FakeConsumer, cluster_topic_ids  # noqa: F401 - an autouse fixture

from streamproc.control import ControlRecord
from streamproc.examples import KIND_RATING, ExampleBatch
from trainer.checkpoint import CheckpointStore
from trainer.settings import TrainerSettings
from trainer.updates import ModelUpdate
from trainer.worker import ERASURE_SLACK_S, TrainerWorker

ALICE = "alice-7f3e9c"  # distinctive: a byte search cannot hit it by accident
ITEM = "film-erased-41d2"


class _Future:
    def __init__(self, offset: int = 0) -> None:
        self.offset = offset  # kafka's RecordMetadata

    def get(self, timeout: float | None = None) -> _Future:
        return self


class Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, Any, Any]] = []

    def send(self, topic: str, value: bytes, key: Any = None, headers: Any = None) -> _Future:
        self.sent.append((topic, value, key, headers))
        return _Future(len(self.sent) - 1)

    def flush(self, timeout: float | None = None) -> None:
        pass

    def updates(self) -> list[tuple[ModelUpdate, bytes]]:
        return [(ModelUpdate.decode(v), v) for t, v, _, _ in self.sent if t.endswith(("model-updates", "model-snapshots"))]


def worker(tmp_path: Path) -> tuple[TrainerWorker, Producer]:
    s = TrainerSettings(kafka_bootstrap="127.0.0.1:1", topic_prefix="t.", checkpoint_dir=str(tmp_path / "ck"), factors=4)
    w = TrainerWorker(s, registry=CollectorRegistry())
    w._producer = w._snap_producer = Producer()
    w._consumer = FakeConsumer()
    w.active = True
    return w, w._producer


def examples(pairs: list[tuple[str, str]], published: float, start: int = 0) -> ExampleBatch:
    n = len(pairs)
    return ExampleBatch.build(
        event_ids=[f"ev-{u}-{i}-{start + j}" for j, (u, i) in enumerate(pairs)],  # like `reco replay`: ids inside
        user_ids=[u for u, _ in pairs], item_ids=[i for _, i in pairs], kinds=[KIND_RATING] * n,
        targets=[4.0 + (j % 2) for j in range(n)], event_times=[published - 1 + j * 1e-3 for j in range(n)],
        published=[published + j * 1e-3 for j in range(n)], processed=[published + 1] * n)


def history(published: float = 1000.0) -> ExampleBatch:
    pairs = [(u, i) for u in ("bob", "carol", ALICE, "dave") for i in ("m1", "m2", "m3", ITEM)]
    return examples(pairs * 3, published)


def ckpt_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


def test_erased_user_leaves_model_delta_snapshot_checkpoint_and_id_log(tmp_path: Path) -> None:
    w, prod = worker(tmp_path)
    w.learn(history())
    w._offsets = {"t.examples:0": 1}
    w.publish_delta()
    w.checkpoint()  # an older checkpoint holding alice: must not survive the erasure
    w.learn(examples([(ALICE, "m2"), ("bob", "m1")], 1100.0, start=100))  # pending, not yet published
    assert ALICE.encode() in ckpt_bytes(tmp_path / "ck")
    assert w.model.n_users == 4

    assert w.erase("user", ALICE, at=1200.0, erasure_id="er1") is True
    assert ALICE not in w.model._umap and w.model.n_users == 3
    w.flush_erasures()
    assert w._snap_thread is not None
    w._snap_thread.join()  # the snapshot is sent off the training thread

    ups = prod.updates()
    delta = [u for u, _ in ups if u.header.kind == "delta"][-1]
    assert delta.header.expired_user_ids == [ALICE]
    assert all(e[0] != ALICE for u, _ in ups[1:] for e in u.header.published)  # the pending entry went too
    snaps = [(u, raw) for u, raw in ups if u.header.kind == "snapshot"]
    # sent after the expiring delta; in sync with the deltas, so it takes the expiring delta's version
    assert snaps and snaps[-1][0].header.version >= delta.header.version and ups[-1][0].header.kind == "snapshot"
    assert "bob" in snaps[-1][0].header.user_ids and ALICE.encode() not in snaps[-1][1]

    ck = tmp_path / "ck"
    assert len(CheckpointStore(ck).paths()) == 1  # older checkpoints removed once the new one is in place
    data = ckpt_bytes(ck)
    assert ALICE.encode() not in data and b"bob" in data
    ids = CheckpointStore(ck).learned_ids()
    assert ids and not any(ALICE in x for x in ids) and any("-bob-" in x for x in ids)
    assert w.metrics.registry.get_sample_value("reco_trainer_erasures_total", {"kind": "user"}) == 1


def test_late_examples_cannot_resurrect_a_user_and_later_events_start_fresh(tmp_path: Path) -> None:
    w, _ = worker(tmp_path)
    w.learn(history())
    w.erase("user", ALICE, at=1200.0)
    w.flush_erasures()
    # published before the erasure, reaching the trainer only now (in flight in streamproc)
    w.learn(examples([(ALICE, "m1"), ("bob", "m3"), (ALICE, "m2")], 1150.0, start=200))
    assert ALICE not in w.model._umap
    assert w.metrics.registry.get_sample_value("reco_trainer_erasure_dropped_examples_total") == 2
    assert "bob" in w.model._umap
    # published after it: a fresh profile with only the new event
    w.learn(examples([(ALICE, "m3")], 1201.0, start=300))
    row = w.model._umap[ALICE]
    assert w.model._knn.events_of(row) == 1


def test_erased_item_is_dropped_and_its_late_examples_too(tmp_path: Path) -> None:
    w, prod = worker(tmp_path)
    w.learn(history())
    w.publish_delta()
    w.erase("item", ITEM, at=1200.0)
    w.flush_erasures()
    assert ITEM not in w.model._imap
    delta = [u for u, _ in prod.updates() if u.header.kind == "delta"][-1]
    assert delta.header.expired_item_ids == [ITEM]
    w.learn(examples([("bob", ITEM), ("carol", "m1")], 1100.0, start=400))
    assert ITEM not in w.model._imap and w.model.n_users == 4
    assert ITEM.encode() not in ckpt_bytes(tmp_path / "ck")


def test_tombstones_survive_checkpoint_and_restore(tmp_path: Path) -> None:
    from kafka import TopicPartition

    w, _ = worker(tmp_path)
    w.learn(history())
    w._offsets = {"t.examples:0": 5, "t.control:0": 1}
    w.erase("user", ALICE, at=1200.0)
    w.flush_erasures()
    assert ALICE.encode() not in ckpt_bytes(tmp_path / "ck")

    w2, _ = worker(tmp_path)
    w2.active = False
    w2._published_version = lambda: 3  # type: ignore[method-assign]
    w2._on_assigned([TopicPartition("t.examples", 0)])
    assert w2.active and w2._offsets["t.control:0"] == 1 and w2._control_seek
    assert ALICE not in w2.model._umap and "bob" in w2.model._umap
    w2.learn(examples([(ALICE, "m1")], 1199.0, start=500))  # re-read after the restore: still blocked
    assert ALICE not in w2.model._umap
    w2.learn(examples([(ALICE, "m1")], 1200.0, start=501))  # "at or before" the erasure time
    assert ALICE not in w2.model._umap
    w2.learn(examples([(ALICE, "m1")], 1300.0, start=502))
    assert ALICE in w2.model._umap


def test_tombstones_are_bounded_oldest_first(tmp_path: Path) -> None:
    w, _ = worker(tmp_path)
    w.settings = dataclasses.replace(w.settings, erasure_tombstones=2)
    for n, u in enumerate(["a", "b", "c"]):
        w.erase("user", u, at=100.0 + n)
    assert len(w._tombs) == 2 and w._tag("user", "a") not in w._tombs and w._tag("user", "c") in w._tombs


def _msg(value: bytes | None, offset: int, timestamp: int = 1_700_000_000_000) -> Any:
    return SimpleNamespace(topic="t.control", partition=0, offset=offset, value=value, key=b"k", timestamp=timestamp)


@pytest.mark.parametrize("value, reason", [
    (b"not json", "invalid_json"),
    (json.dumps({"schema_version": 1, "action": "erase", "kind": "user", "id": "x", "erasure_id": "e", "requested_at": 1,
                 "extra": 1}).encode(), "unknown_field"),
    (json.dumps({"schema_version": 1, "action": "erase", "kind": "user", "id": "", "erasure_id": "e", "requested_at": 1}).encode(),
     "invalid_field"),
    (b"{" + b" " * 5000 + b"}", "too_large"),
    (None, "empty"),
])
def test_bad_control_records_go_to_dead_letters_and_are_skipped(tmp_path: Path, value: bytes | None, reason: str) -> None:
    w, prod = worker(tmp_path)
    assert w._apply_control("t.control:0", _msg(value, 7)) is False
    topic, sent, key, headers = prod.sent[-1]
    assert topic == "t.events.dlq" and sent == (value or b"") and dict(headers)["reason"] == reason.encode()
    assert dict(headers)["source_offset"] == b"7"
    assert w._offsets["t.control:0"] == 8 and w.erasures_applied == 0
    assert w.metrics.registry.get_sample_value("reco_trainer_invalid_control_records_total", {"reason": reason}) == 1


def test_control_record_erases_at_its_kafka_timestamp(tmp_path: Path) -> None:
    w, _ = worker(tmp_path)
    rec = ControlRecord.erase("user", ALICE, requested_at=5.0)
    assert w._apply_control("t.control:0", _msg(rec.to_json(), 0, timestamp=1_200_000)) is True
    assert w._tombs[w._tag("user", ALICE)] == pytest.approx(1200.0 + ERASURE_SLACK_S)
    assert w._apply_control("t.control:0", _msg(rec.to_json(), 0)) is False  # already applied (offset behind)
    assert w.erasures_applied == 1


def test_checkpoint_store_erases_tagged_lines_and_keeps_plain_ones(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    comps = {"m": ({}, {"w": np.ones(2, np.float32)})}
    store.save(version=1, offsets={}, components=comps, learned_ids=["plain", "e1\tua\tia", "e2\tub\tia", "e3\tuc\tib"])
    store.save(version=2, offsets={}, components=comps, erase_tags={"ia"}, drop_older=True)
    assert store.learned_ids() == ["plain", "e3"] and len(store.paths()) == 1


def test_an_erasure_time_in_the_future_is_capped_at_the_trainers_clock(tmp_path: Path) -> None:
    import time

    w, _ = worker(tmp_path)
    rec = ControlRecord.erase("user", ALICE)
    w._apply_control("t.control:0", _msg(rec.to_json(), 0, timestamp=int((time.time() + 3600) * 1000)))
    assert w._tombs[w._tag("user", ALICE)] <= time.time() + ERASURE_SLACK_S
