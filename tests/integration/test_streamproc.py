"""Stream workers against the real embedded broker: examples out, dead letters, dedupe, groups."""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from support import poll  # the one deadline-poll helper (raises TimeoutError)

from streamproc.examples import KIND_CLICK, KIND_COMMENT, KIND_RATING, ExampleBatch
from streamproc.kafka import client_config, read_all
from streamproc.publisher import EventPublisher
from streamproc.settings import Settings
from streamproc.topics import Topics
from streamproc.worker import StreamWorker

pytestmark = pytest.mark.integration


def fake_encode(texts: list[str]) -> np.ndarray:
    """Deterministic unit vectors, so tests do not wait for the real model."""
    out = np.zeros((len(texts), 384), np.float32)
    for i, t in enumerate(texts):
        out[i, len(t) % 384] = 1.0
    return out


class Running:
    """A worker running in a thread; ``stop()`` finishes in-flight work and joins."""

    def __init__(self, settings: Settings, **kw: Any) -> None:
        self.registry = CollectorRegistry()
        self.worker = StreamWorker(settings, registry=self.registry, **kw)
        self.stop_event = threading.Event()
        self.error: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.worker.run(self.stop_event)
        except BaseException as exc:  # noqa: BLE001
            self.error.append(exc)

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(60)
        assert not self.thread.is_alive()
        assert not self.error, self.error

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0


@pytest.fixture
def start(settings: Settings) -> Iterator[Callable[..., Running]]:
    running: list[Running] = []

    def _start(**kw: Any) -> Running:
        kw.setdefault("encode_fn", fake_encode)
        r = Running(settings, **kw)
        running.append(r)
        return r

    yield _start
    for r in running:
        if r.thread.is_alive():
            r.stop()


def wait_for(cond: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    poll(cond, timeout, what, 0.02)


class Examples:
    """Reads the examples topic as it fills."""

    def __init__(self, settings: Settings) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.consumer = KafkaConsumer(auto_offset_reset="earliest", enable_auto_commit=False, **client_config(settings))
        tp = TopicPartition(Topics.from_settings(settings).examples, 0)
        self.consumer.assign([tp])
        self.consumer.seek_to_beginning(tp)
        self.batches: list[ExampleBatch] = []

    def until(self, n: int, timeout: float = 60.0) -> list[ExampleBatch]:
        deadline = time.monotonic() + timeout
        while self.count() < n and time.monotonic() < deadline:
            for msgs in self.consumer.poll(timeout_ms=200).values():
                self.batches.extend(ExampleBatch.decode(m.value) for m in msgs)
        assert self.count() >= n, f"{self.count()} examples, expected {n}"
        return self.batches

    def poll(self, timeout_ms: int = 200) -> list[str]:
        """Read what has arrived; returns every event_id so far."""
        for msgs in self.consumer.poll(timeout_ms=timeout_ms).values():
            self.batches.extend(ExampleBatch.decode(m.value) for m in msgs)
        return self.ids()

    def count(self) -> int:
        return sum(len(b) for b in self.batches)

    def ids(self) -> list[str]:
        return [e for b in self.batches for e in b.event_ids]

    def close(self) -> None:
        self.consumer.close()


def raw_event(type_: str, eid: str, user: str, item: str, **kw: Any) -> bytes:
    ev = {"schema_version": 1, "type": type_, "event_id": eid, "user_id": user, "item_id": item, "event_time": time.time() - 10, **kw}
    return json.dumps(ev).encode()


def send_raw(settings: Settings, messages: list[tuple[bytes | None, bytes]]) -> None:
    with EventPublisher(settings) as pub:
        for key, value in messages:
            pub._producer.send(pub.topic, key=key, value=value)


@pytest.mark.slow
def test_valid_events_become_examples_with_the_real_encoder(settings: Settings, start) -> None:
    w = start(encode_fn=None)  # the real model
    with EventPublisher(settings) as pub:
        r = pub.rating(user_id="u1", item_id="m1", rating=4.5)
        c = pub.click(user_id="u1", item_id="m2")
        k = pub.comment(user_id="u1", item_id="m3", text="a hilarious comedy, very funny", rating=5.0)
        k2 = pub.comment(user_id="u2", item_id="m3", text="funny movie that made me laugh")
    t_sent = time.time()
    ex = Examples(settings)
    batches = ex.until(4)
    ex.close()
    by_id = {}
    for b in batches:
        for i, eid in enumerate(b.event_ids):
            by_id[eid] = (b, i)
    b, i = by_id[r]
    rec = b.records[i]
    assert rec["kind"] == KIND_RATING and rec["target"] == 4.5 and rec["emb_row"] == -1
    assert b.user_ids[i] == "u1" and b.item_ids[i] == "m1"
    assert rec["published"] <= rec["processed"] <= time.time() and rec["published"] > t_sent - 60
    b, i = by_id[c]
    assert b.records[i]["kind"] == KIND_CLICK and math.isnan(b.records[i]["target"])
    (b1, i1), (b2, i2) = by_id[k], by_id[k2]
    assert b1.records[i1]["kind"] == KIND_COMMENT and b1.records[i1]["target"] == 5.0 and math.isnan(b2.records[i2]["target"])
    e1, e2 = b1.embeddings[b1.records[i1]["emb_row"]], b2.embeddings[b2.records[i2]["emb_row"]]
    assert e1.shape == (384,) and abs(float(np.linalg.norm(e1)) - 1) < 1e-4
    assert float(e1 @ e2) > 0.4  # both about a funny film
    wait_for(lambda: w.metric("reco_streamproc_examples_produced_total", {"kind": "comment"}) == 2, what="metrics")
    assert w.metric("reco_streamproc_events_consumed_total", {"type": "rating"}) == 1
    assert w.metric("reco_streamproc_encode_batch_size_count") >= 1
    assert w.metric("reco_streamproc_stage_latency_seconds_count") == 4
    w.stop()


def test_malformed_messages_go_to_dead_letters_and_valid_ones_arrive_in_order(settings: Settings, start) -> None:
    bad_kinds: list[tuple[str, bytes]] = [
        ("invalid_json", b"{not json"),
        ("too_large", b'{"x":"' + b"a" * 70_000 + b'"}'),
        ("wrong_type", raw_event("rating", "X", "u", "m", rating="four")),
        ("unknown_type", raw_event("like", "X", "u", "m")),
        ("out_of_range", raw_event("rating", "X", "u", "m", rating=42)),
        ("invalid_utf8", b'{"a":"\xff\xfe"}'),
        ("missing_field", json.dumps({"schema_version": 1, "type": "click", "event_id": "X"}).encode()),
    ]
    messages: list[tuple[bytes | None, bytes]] = []
    valid: dict[str, list[str]] = {}
    n_bad = 0
    for i in range(3000):
        user = f"u{i % 7}"
        if i % 3 == 1:
            reason, value = bad_kinds[n_bad % len(bad_kinds)]
            messages.append((f"bad{n_bad}".encode(), value))
            n_bad += 1
        else:
            eid = f"ok{i}"
            valid.setdefault(user, []).append(eid)
            messages.append((user.encode(), raw_event("rating" if i % 2 else "click", eid, user, f"m{i}", **({"rating": 3.0} if i % 2 else {}))))
    assert n_bad == 1000
    send_raw(settings, messages)
    w = start()
    ex = Examples(settings)
    ex.until(2000)
    wait_for(lambda: w.worker.dead_letters_acked == 1000, what="dead letters acknowledged")
    ids = ex.ids()
    ex.close()
    assert len(ids) == 2000 and set(ids) == {e for v in valid.values() for e in v}
    for _user, expected in valid.items():  # per user (= per partition) order is event order
        assert [e for e in ids if e in set(expected)] == expected
    dead = read_all(settings, Topics.from_settings(settings).dead_letters)
    assert len(dead) == 1000
    by_key = {m.key: m for m in dead}
    for n in range(1000):
        m = by_key[f"bad{n}".encode()]
        reason, value = bad_kinds[n % len(bad_kinds)]
        h = {k: v.decode() for k, v in m.headers}
        assert m.value == value, "dead letters carry the original bytes"
        assert h["reason"] == reason and h["message"] and h["source_topic"] == Topics.from_settings(settings).events
        assert int(h["source_offset"]) >= 0 and 0 <= int(h["source_partition"]) < 4
    assert {k for k, v in by_key.items() if {a: b.decode() for a, b in v.headers}["reason"] == "wrong_type"}
    assert w.metric("reco_streamproc_events_invalid_total", {"reason": "too_large"}) == sum(
        1 for n in range(1000) if bad_kinds[n % len(bad_kinds)][0] == "too_large")
    assert w.metric("reco_streamproc_dead_letters_total") == 1000
    assert w.metric("reco_streamproc_events_consumed_total", {"type": "invalid"}) == 1000
    w.stop()


def test_duplicates_are_dropped(settings: Settings, start) -> None:
    msgs = [(b"u1", raw_event("rating", f"e{i % 50}", "u1", f"m{i % 50}", rating=4.0)) for i in range(150)]
    send_raw(settings, msgs)
    w = start()
    wait_for(lambda: w.worker.consumed == 150, what="all consumed")
    ex = Examples(settings)
    ex.until(50)
    wait_for(lambda: w.metric("reco_streamproc_duplicates_total") == 100, what="duplicates counted")
    w.stop()
    ex.until(50)
    assert sorted(ex.ids()) == sorted(f"e{i}" for i in range(50))
    ex.close()


def test_events_only_wait_behind_pending_comments_of_their_own_user(settings: Settings, start) -> None:
    release = threading.Event()

    def slow_encode(texts: list[str]) -> np.ndarray:
        release.wait(60)  # the encoder is "busy" until the test lets it go
        return fake_encode(texts)

    w = start(encode_fn=slow_encode)
    wait_for(lambda: len(w.worker.assigned) == 4, what="partitions assigned")
    with EventPublisher(settings) as pub:
        before = pub.rating(user_id="c", item_id="m0", rating=2.0)
        comment = pub.comment(user_id="c", item_id="m1", text="slow to encode")
        ratings = {f"u{i}": pub.rating(user_id=f"u{i}", item_id="m2", rating=4.0) for i in range(24)}
        after = pub.rating(user_id="c", item_id="m3", rating=3.0)
    part = {json.loads(m.value)["user_id"]: m.partition for m in read_all(settings, Topics.from_settings(settings).events)}
    same_partition = {ratings[u] for u in ratings if part[u] == part["c"]}
    assert same_partition, "some users share the commenting user's partition"
    ex = Examples(settings)
    # other users (also those of the same partition) do not wait for c's comment to be encoded ...
    wait_for(lambda: set(ratings.values()) | {before} <= set(ex.poll()), what="every other user's rating")
    # ... but c's own later rating keeps c's order behind the pending comment
    assert not {comment, after} & set(ex.ids()), "a user's events stay behind that user's pending comment"
    release.set()
    wait_for(lambda: {comment, after} <= set(ex.poll()), what="the comment and what follows it once encoded")
    ids = ex.ids()
    ex.close()
    assert ids.index(before) < ids.index(comment) < ids.index(after)
    assert sorted(ids) == sorted({before, comment, after, *ratings.values()})  # each exactly once
    w.stop()


def test_example_messages_stay_under_the_message_size_limit(settings: Settings) -> None:
    small = dataclasses.replace(settings, max_message_bytes=10_000)
    users = [f"user-{'é' * 200}-{i}" for i in range(60)]  # JSON escapes each é to 6 bytes: the estimate is low
    send_raw(small, [(u.encode(), raw_event("click", f"s{i}", u, "m" * 200)) for i, u in enumerate(users)])
    w = Running(small, encode_fn=fake_encode)
    ex = Examples(small)
    ex.until(60)
    w.stop()
    ex.close()
    assert sorted(ex.ids()) == sorted(f"s{i}" for i in range(60))
    assert all(len(m.value) <= 10_000 for m in read_all(small, Topics.from_settings(small).examples))
