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


def test_pushes_go_out_in_chunks_and_pause_to_their_cpu_share(monkeypatch: Any) -> None:
    import serving.kafka_io as kio

    monkeypatch.setattr(kio, "PUSH_CHUNK", 3)
    store, sm = _store()
    sends: list[list[Any]] = []
    pusher = Pusher(ServingSettings(push_min_interval_s=0.0, push_max_cpu_share=0.2), store, sends.append, store.metrics)
    pauses: list[float] = []
    backlog: list[float] = []
    real_wait = pusher._halt.wait

    def wait(timeout: float | None = None) -> bool:
        pauses.append(timeout or 0.0)
        backlog.append(store.metrics.registry.get_sample_value("reco_serving_push_backlog_users") or 0.0)
        return real_wait(0)  # no real pause: the test checks what was asked for

    monkeypatch.setattr(pusher._halt, "wait", wait)
    store.listeners.append(pusher.on_swap)
    store.apply(sm.delta(2, published=[[f"u{j}", "i1", time.time()] for j in range(10)]).encode())
    pusher.start()
    try:
        deadline = time.monotonic() + 10
        while sum(map(len, sends)) < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        pusher.stop()
        pusher.join()
    assert sorted(m[0] for batch in sends for m in batch) == sorted(f"u{j}".encode() for j in range(10))  # each user once
    assert [len(b) for b in sends] == [3, 3, 3, 1]  # the oldest first, a chunk per round
    assert len(pauses) >= 4 and all(p > 0 for p in pauses[:4])  # a pause after every round, 4x its work at a 0.2 share
    assert max(backlog) > 0 and store.metrics.registry.get_sample_value("reco_serving_push_backlog_users") == 0
