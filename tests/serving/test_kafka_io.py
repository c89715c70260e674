"""Kafka request answering and the push rate limit, without a broker."""

from __future__ import annotations

import json
import time
from typing import Any

from prometheus_client import CollectorRegistry

from serving.bench import SyntheticModel
from serving.kafka_io import Pusher, answer_request
from serving.metrics import ServingMetrics
from serving.store import ModelStore
from streamproc.settings import Settings


def _store() -> tuple[ModelStore, SyntheticModel]:
    store = ModelStore(Settings(), ServingMetrics(CollectorRegistry()))
    sm = SyntheticModel(10, 50, 4)
    store.apply(sm.snapshot()[0].encode())
    return store, sm


def test_request_answered_keyed_by_user_with_correlation_id() -> None:
    store, _ = _store()
    (key, value, headers), status = answer_request(b'{"request_id":"r9","user_id":"u2","k":3,"exclude_seen":false}', store, Settings())
    body = json.loads(value)
    assert status == "ok" and key == b"u2" and headers == [("correlation_id", b"r9")]
    assert body["request_id"] == "r9" and len(body["items"]) == 3 and body["version"] == 1


def test_invalid_requests_get_error_replies_when_they_have_an_id() -> None:
    store, _ = _store()
    for raw, code in [(b'{"request_id":"r","user_id":""}', "invalid_user_id"), (b'{"request_id":"r","user_id":"u","k":"3"}', "invalid_k"),
                      (b'{"request_id":"r","user_id":"u","exclude_seen":"yes"}', "invalid_exclude_seen")]:
        (_, value, _), status = answer_request(raw, store, Settings())
        assert status == "invalid" and json.loads(value)["error"] == code
    for raw in (b"not json", b"[1]", b'{"user_id":"u"}', None):
        (key, value, _), status = answer_request(raw, store, Settings())
        assert status == "invalid" and value == b""
    (_, value, _), status = answer_request(b'{"request_id":"r","user_id":"u"}', ModelStore(), Settings())
    assert status == "error" and json.loads(value)["error"] == "no_model"


def test_push_after_feedback_is_rate_limited_per_user() -> None:
    store, sm = _store()
    sent: list[Any] = []
    pusher = Pusher(Settings(push_min_interval_s=0.3), store, sent.extend, store.metrics)
    store.listeners.append(pusher.on_swap)
    pusher.start()
    try:
        for _ in range(3):  # three deltas naming u1 in quick succession
            store.apply(sm.delta(2, published=[["u1", "i1", time.time()]]).encode())
        deadline = time.monotonic() + 5
        while len(sent) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        pusher.stop()
        pusher.join()
    assert len(sent) == 2  # one at once, one when the interval ended (with the newest model)
    first, last = (json.loads(v) for _, v, _ in sent)
    assert first["reason"] == "push" and sent[0][0] == b"u1"
    assert last["version"] == 4
    assert store.metrics.registry.get_sample_value("reco_serving_push_messages_total") == 2
