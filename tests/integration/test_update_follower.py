"""A serving replica's update follower on the embedded broker: it starts from the newest complete
snapshot on the model-snapshots topic and the deltas after the offset that snapshot names, never
reading older history, and reloads from model-snapshots after a gap."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
from kafka import KafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry
from support import FakeConsumer, poll

from serving.bench import SyntheticModel
from serving.kafka_io import UpdateFollower
from serving.metrics import ServingMetrics
from serving.settings import ServingSettings
from serving.store import ModelStore
from streamproc.kafka import client_config
from streamproc.topics import Topics
from trainer.updates import ModelUpdate


@pytest.fixture
def producer(settings: ServingSettings) -> Iterator[KafkaProducer]:
    p = KafkaProducer(max_request_size=4 * settings.max_message_bytes, **client_config(settings))
    yield p
    p.close()


def _send(producer: KafkaProducer, topic: str, updates: list[ModelUpdate]) -> int:
    """Publish in order; returns the bytes sent."""
    for u in updates:
        producer.send(topic, u.encode())
    producer.flush()
    return sum(len(u.encode()) for u in updates)


def _with(updates: list[ModelUpdate], **fields: object) -> list[ModelUpdate]:
    return [ModelUpdate(replace(u.header, **fields), u.tensors) for u in updates]  # type: ignore[arg-type]


def _follower(settings: ServingSettings) -> tuple[UpdateFollower, ModelStore]:
    store = ModelStore(settings, ServingMetrics(CollectorRegistry()))
    return UpdateFollower(settings, store, snapshot_check_s=0.2), store


def test_a_replica_starts_from_the_snapshot_topic_then_follows_deltas_and_reloads_after_a_gap(
        settings: ServingSettings, producer: KafkaProducer) -> None:
    topics = Topics.from_settings(settings)
    sm = SyntheticModel(40, 120, 4, candidates=5)
    history = [sm.delta(20) for _ in range(5)]  # v1..v5 at offsets 0..4: older than any snapshot here
    _send(producer, topics.model_updates, history)
    snap = sm.snapshot(max_bytes=3_000)  # v6, several chunks
    assert len(snap) > 2
    # deltas_from 3 is a lower bound (the trainer's end offset may lag): v4 and v5 are skipped unread
    _send(producer, topics.model_snapshots, _with(snap, deltas_from=3))
    newer = _with(sm.snapshot(max_bytes=3_000)[:2], deltas_from=99)  # v7, incomplete: still being sent
    _send(producer, topics.model_snapshots, newer)
    sm.version = 6  # the deltas after snapshot v6 (v7 above never completed)
    tail = [sm.delta(20) for _ in range(3)]  # v7..v9 at offsets 5..7
    _send(producer, topics.model_updates, tail)

    follower, store = _follower(settings)
    follower.start()
    try:
        poll(lambda: follower.caught_up.is_set(), 60, "the replica to start", 0.05)
        assert store.version == 9 and follower.snapshot_loads == 1 and follower.caught_up_from == 3
        assert store.swaps == 1 + len(tail) and store.rejected == {}  # history before the snapshot was never applied
        model = store.current
        assert model is not None and model.n_users == 40
        np.testing.assert_allclose(model.user_vector("u3"), sm.user_factors[3], atol=1e-6)
        # from model-updates only the deltas from offset 3 on, never the history before it
        assert follower.delta_bytes_read == sum(len(u.encode()) for u in history[3:] + tail)
        assert follower.snapshot_bytes_read >= sum(len(u.encode()) for u in snap)

        # the trainer restarted from a checkpoint: its deltas build on a snapshot replicas do not have
        sm.version = 19
        restart = sm.snapshot(max_bytes=3_000)  # v20
        after = [sm.delta(20) for _ in range(2)]  # v21, v22 (base 20, 21)
        _send(producer, topics.model_updates, after[:1])
        poll(lambda: store.rejected.get("gap") == 1, 30, "the gap seen", 0.05)
        _send(producer, topics.model_updates, after[1:])  # skipped while a snapshot is awaited
        assert store.version == 9
        _send(producer, topics.model_snapshots, _with(restart, deltas_from=8))
        poll(lambda: store.version == 22, 30, "reloaded from model-snapshots and followed on", 0.05)
        assert follower.snapshot_loads == 2 and store.rejected == {"gap": 1}
        np.testing.assert_allclose(store.current.user_vector("u3"), sm.user_factors[3], atol=1e-6)
    finally:
        follower.stop()
        follower.join(10)


def test_a_replica_waits_for_the_first_snapshot(settings: ServingSettings, producer: KafkaProducer) -> None:
    topics = Topics.from_settings(settings)
    sm = SyntheticModel(10, 30, 4)
    first = [sm.delta(5)]  # a trainer's first delta (base 0) comes before its first snapshot
    _send(producer, topics.model_updates, first)
    follower, store = _follower(settings)
    follower.start()
    try:
        poll(lambda: follower.caught_up.is_set(), 60, "the replica to start", 0.05)
        assert store.current is None
        snap = _with(sm.snapshot(), version=1, deltas_from=1)  # in sync: the first delta's version
        _send(producer, topics.model_snapshots, snap)
        sm.version = 1
        _send(producer, topics.model_updates, [sm.delta(5)])  # v2, base 1
        poll(lambda: store.version == 2, 30, "the first snapshot loaded and the delta after it applied", 0.05)
        assert follower.snapshot_loads == 1
    finally:
        follower.stop()
        follower.join(10)


def test_a_recreated_model_updates_topic_is_read_from_offset_0(monkeypatch: pytest.MonkeyPatch) -> None:
    """After Kafka was out of reach, a model-updates topic with a new Kafka topic id (deleted and
    created again: a memory-only broker that restarted) is read from its start, and model-snapshots
    is looked at afresh; the same id changes nothing."""
    ids = {"t.model-updates": "id-1"}
    monkeypatch.setattr("streamproc.kafka.topic_ids", lambda settings, topics, **kw: {t: ids[t] for t in topics})
    f, _ = _follower(ServingSettings(kafka_bootstrap="127.0.0.1:1", topic_prefix="t."))
    f._topic_id.id, f._next_offset, f._snap_end_seen = "id-1", 40, 7
    consumer, tp = FakeConsumer(), TopicPartition("t.model-updates", 0)
    f._check_recreated(consumer, tp)
    assert (f._next_offset, f._snap_end_seen, consumer.seeks) == (40, 7, {})
    ids["t.model-updates"] = "id-2"
    f._check_recreated(consumer, tp)
    assert (f._next_offset, f._snap_end_seen, consumer.seeks, f._topic_id.id) == (0, -1, {tp: 0}, "id-2")


def test_a_replica_publishes_what_it_serves_and_a_new_replica_starts_from_it(settings: ServingSettings, producer: KafkaProducer) -> None:
    """RECO_PUBLISH_SNAPSHOTS_S: the snapshot a replica publishes holds what it serves (an expired
    user and an expired item left out), with ``deltas_from`` after the delta it serves, so a new
    replica that loads it and the deltas after it serves exactly what the first one serves."""
    from serving.kafka_io import SnapshotPublisher

    topics = Topics.from_settings(settings)
    sm = SyntheticModel(300, 150, 4, candidates=6)
    trainer_snap = sm.snapshot(max_bytes=3_000)
    _send(producer, topics.model_snapshots, _with(trainer_snap, deltas_from=0))
    _send(producer, topics.model_updates, [sm.delta(30) for _ in range(3)])
    gone = sm.delta(30)
    gone.header.expired_user_ids.append("u5")
    dead_item = next(i for i in sm.item_ids if i not in gone.header.item_ids)
    gone.header.expired_item_ids.append(dead_item)
    _send(producer, topics.model_updates, [ModelUpdate(gone.header, gone.tensors)])
    first, store = _follower(settings)
    first.start()
    try:
        poll(lambda: store.version == sm.version, 60, "the first replica to follow the deltas", 0.05)
        poll(lambda: first.snapshot_point() is not None and first.snapshot_point()[0].version == sm.version, 10, "its snapshot point")
        publisher = SnapshotPublisher(replace(settings, publish_snapshots_s=3600.0, max_message_bytes=10_000), first)
        assert publisher.publish(*first.snapshot_point()) > 2  # several chunks
        after = [sm.delta(30) for _ in range(2)]
        _send(producer, topics.model_updates, after)
        poll(lambda: store.version == sm.version, 30, "the first replica to apply the deltas after the snapshot", 0.05)
    finally:
        first.stop()
        first.join(10)
    second, store2 = _follower(settings)
    second.start()
    try:
        poll(lambda: second.caught_up.is_set() and store2.version == sm.version, 60, "the second replica to start", 0.05)
        assert second.snapshot_loads == 1 and second.caught_up_from == 4  # after the 4 deltas the snapshot served (offsets 0-3)
        assert store2.swaps == 1 + len(after) and store2.rejected == {}
        a, b = store.current, store2.current
        assert a is not None and b is not None
        assert a.item_row(dead_item) is None and dead_item not in b.item_ids()
        assert not a.has_user("u5") and not b.has_user("u5")
        items = [f"i{k}" for k in range(150) if f"i{k}" != dead_item]
        for user in (f"u{k}" for k in range(300)):
            assert b.score(user, items) == a.score(user, items)
            # (seen lists come from the deltas' ``published``; a snapshot carries none, the trainer's neither)
            assert b.recommend(user, 10, exclude_seen=False).items == a.recommend(user, 10, exclude_seen=False).items
    finally:
        second.stop()
        second.join(10)
