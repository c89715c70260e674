"""Kafka request answering and the push rate limit, without a broker."""

from __future__ import annotations

import json
import time
from typing import Any

from prometheus_client import CollectorRegistry

from serving.bench import SyntheticModel
from serving.kafka_io import Pusher, answer_request
from serving.metrics import ServingMetrics
from serving.settings import ServingSettings
from serving.store import ModelStore


def _store() -> tuple[ModelStore, SyntheticModel]:
    store = ModelStore(ServingSettings(), ServingMetrics(CollectorRegistry()))
    sm = SyntheticModel(10, 50, 4)
    store.apply(sm.snapshot()[0].encode())
    return store, sm


def test_request_answered_keyed_by_user_with_correlation_id() -> None:
    store, _ = _store()
    (key, value, headers), status = answer_request(b'{"request_id":"r9","user_id":"u2","k":3,"exclude_seen":false}', store, ServingSettings())
    body = json.loads(value)
    assert status == "ok" and key == b"u2" and headers == [("correlation_id", b"r9")]
    assert body["request_id"] == "r9" and len(body["items"]) == 3 and body["version"] == 1


def test_invalid_requests_get_error_replies_when_they_have_an_id() -> None:
    store, _ = _store()
    for raw, code in [(b'{"request_id":"r","user_id":""}', "invalid_user_id"), (b'{"request_id":"r","user_id":"u","k":"3"}', "invalid_k"),
                      (b'{"request_id":"r","user_id":"u","exclude_seen":"yes"}', "invalid_exclude_seen")]:
        (_, value, _), status = answer_request(raw, store, ServingSettings())
        assert status == "invalid" and json.loads(value)["error"] == code
    for raw in (b"not json", b"[1]", b'{"user_id":"u"}', None):
        (key, value, _), status = answer_request(raw, store, ServingSettings())
        assert status == "invalid" and value == b""
    (_, value, _), status = answer_request(b'{"request_id":"r","user_id":"u"}', ModelStore(), ServingSettings())
    assert status == "error" and json.loads(value)["error"] == "no_model"


def test_push_after_feedback_is_rate_limited_per_user() -> None:
    store, sm = _store()
    sent: list[tuple[float, Any]] = []
    pusher = Pusher(ServingSettings(push_min_interval_s=0.3), store, lambda msgs: sent.extend((time.monotonic(), m) for m in msgs), store.metrics)
    store.listeners.append(pusher.on_swap)

    def wait_for(cond: Any) -> None:
        deadline = time.monotonic() + 10
        while not cond() and time.monotonic() < deadline:
            time.sleep(0.01)

    pusher.start()
    try:
        store.apply(sm.delta(2, published=[["u1", "i1", time.time()]]).encode())
        wait_for(lambda: len(sent) >= 1)
        for _ in range(2):  # more feedback from u1 inside the interval
            store.apply(sm.delta(2, published=[["u1", "i1", time.time()]]).encode())
        wait_for(lambda: sent and json.loads(sent[-1][1][1])["version"] == 4)
    finally:
        pusher.stop()
        pusher.join()
    bodies = [json.loads(m[1]) for _, m in sent]
    assert bodies[0]["version"] == 2 and bodies[-1]["version"] == 4  # the newest model is pushed in the end
    assert all(m[0] == b"u1" and b["reason"] == "push" for (_, m), b in zip(sent, bodies, strict=True))
    assert len(sent) < 4  # three updates for u1 inside one interval were coalesced
    times = [t for t, _ in sent]
    assert all(b - a >= 0.25 for a, b in zip(times, times[1:], strict=False))  # never more often than the 0.3 s interval
    assert store.metrics.registry.get_sample_value("reco_serving_push_messages_total") == len(sent)
