"""Serving against the real embedded broker: hot swap via Kafka, request/response, push, late replica."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry
from support import poll  # the one deadline-poll helper (raises TimeoutError)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from serving.app import create_app
from serving.bench import SyntheticModel
from serving.settings import ServingSettings
from streamproc.kafka import client_config, read_all
from streamproc.topics import Topics
from trainer.updates import ModelUpdate

pytestmark = pytest.mark.integration

KEY = "k3y"


def _wait(cond: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    return poll(cond, timeout, what, 0.05)


@pytest.fixture
def s(settings: ServingSettings) -> ServingSettings:
    return dataclasses.replace(settings, api_key=KEY, push_min_interval_s=0.0)


@pytest.fixture
def producer(s: ServingSettings) -> Iterator[KafkaProducer]:
    p = KafkaProducer(max_request_size=4 * s.max_message_bytes, **client_config(s))
    yield p
    p.close()


def _publish(producer: KafkaProducer, s: ServingSettings, updates: list[ModelUpdate] | list[bytes]) -> None:
    for u in updates:
        producer.send(Topics.from_settings(s).model_updates, u if isinstance(u, bytes) else u.encode())
    producer.flush()


def _app(s: ServingSettings) -> TestClient:
    return TestClient(create_app(s, registry=CollectorRegistry()))


def _version(client: TestClient) -> int | None:
    return client.get("/readyz").json()["version"]


def _read_recommendations(s: ServingSettings, match: Callable[[Any], bool], timeout: float = 30.0) -> Any:
    consumer = KafkaConsumer(auto_offset_reset="earliest", enable_auto_commit=False, **client_config(s))
    topic = Topics.from_settings(s).recommendations
    try:
        parts = [TopicPartition(topic, p) for p in range(s.partitions)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=200).values():
                for r in recs:
                    if match(r):
                        return r
        raise AssertionError("no matching message on the recommendations topic")
    finally:
        consumer.close()


def test_update_visible_over_http_kafka_requests_and_push(s: ServingSettings, producer: KafkaProducer) -> None:
    sm = SyntheticModel(50, 300, 8)
    with _app(s) as client:
        assert client.get("/readyz").status_code == 503
        _publish(producer, s, sm.snapshot(max_bytes=20_000))  # several chunks
        _wait(lambda: client.get("/readyz").status_code == 200, "ready")
        assert client.get("/v1/users/u1/recommendations").json()["version"] == 1
        fb = client.get("/v1/users/stranger/recommendations").json()
        assert fb["fallback"] is True and len(fb["items"]) == 10

        _publish(producer, s, [sm.delta(20, published=[["u7", "i3", time.time()]])])
        _wait(lambda: _version(client) == 2, "delta applied")
        body = client.get("/v1/users/u7/recommendations?k=300").json()
        assert body["version"] == 2 and "i3" not in [i["item_id"] for i in body["items"]]

        req = {"request_id": "req-1", "user_id": "u4", "k": 5, "exclude_seen": True}
        producer.send(Topics.from_settings(s).requests, json.dumps(req).encode(), key=b"u4")
        producer.send(Topics.from_settings(s).requests, b'{"request_id": "req-bad", "user_id": "u4", "k": -1}', key=b"u4")
        producer.flush()
        reply = _read_recommendations(s, lambda r: dict(r.headers or []).get("correlation_id") == b"req-1")
        got = json.loads(reply.value)
        assert reply.key == b"u4" and got["request_id"] == "req-1" and got["version"] == 2 and len(got["items"]) == 5
        bad = json.loads(_read_recommendations(s, lambda r: b"req-bad" in r.value).value)
        assert bad["error"] == "invalid_k"
        push = json.loads(_read_recommendations(s, lambda r: json.loads(r.value).get("reason") == "push").value)
        assert push["user_id"] == "u7" and push["version"] == 2
        text = client.get("/metrics").text
    assert 'reco_serving_kafka_requests_total{status="invalid"} 1.0' in text
    assert "reco_serving_feedback_latency_seconds_count 1.0" in text
    assert "reco_serving_ready 1.0" in text and "reco_serving_kafka_connected 1.0" in text


def test_late_replica_catches_up_from_snapshot_and_deltas(s: ServingSettings, producer: KafkaProducer) -> None:
    sm = SyntheticModel(40, 200, 8)
    _publish(producer, s, sm.snapshot(max_bytes=20_000) + [sm.delta(10) for _ in range(3)])
    _publish(producer, s, sm.snapshot(max_bytes=20_000) + [sm.delta(10, new_items=2) for _ in range(4)])
    with _app(s) as first:
        _wait(lambda: _version(first) == 9, "first replica at version 9")
        with _app(s) as late:
            _wait(lambda: _version(late) == 9, "late replica at version 9")
            a = first.get("/v1/users/u3/recommendations?exclude_seen=false").json()
            b = late.get("/v1/users/u3/recommendations?exclude_seen=false").json()
            assert a == b
            text = late.get("/metrics").text
            # only the last snapshot and the 4 deltas after it were applied
            assert "reco_serving_model_swaps_total 5.0" in text
            _publish(producer, s, [sm.delta(10)])
            _wait(lambda: _version(first) == 10 and _version(late) == 10, "both replicas at 10")


def test_requests_during_a_burst_of_swaps_all_succeed(s: ServingSettings, producer: KafkaProducer) -> None:
    sm = SyntheticModel(100, 2000, 16)
    with _app(s) as client:
        _publish(producer, s, sm.snapshot())
        _wait(lambda: _version(client) == 1, "first snapshot")
        failures: list[Any] = []
        versions: set[int] = set()
        stop = threading.Event()

        def hammer(n: int) -> None:
            while not stop.is_set():
                r = client.get(f"/v1/users/u{n}/recommendations?k=20")
                if r.status_code != 200 or len(r.json()["items"]) != 20:
                    failures.append((r.status_code, r.text[:200]))
                else:
                    versions.add(r.json()["version"])

        threads = [threading.Thread(target=hammer, args=(n,)) for n in range(3)]
        for t in threads:
            t.start()
        try:
            for n in range(30):
                _publish(producer, s, sm.snapshot() if n % 10 == 9 else [sm.delta(200, new_items=n % 2)])
            _wait(lambda: _version(client) == sm.version, "last update applied")
        finally:
            stop.set()
            for t in threads:
                t.join()
    assert not failures
    assert len(versions) > 1


def test_events_endpoint_auth_and_publish(s: ServingSettings) -> None:
    with _app(s) as client:
        _wait(lambda: client.app.state.kafka["kafka"].producer_ok, "producer connected")
        ev = {"type": "click", "user_id": "u9", "item_id": "m1", "event_id": "ev-1"}
        assert client.post("/v1/events", json=[ev]).status_code == 401
        r = client.post("/v1/events", json=[ev, {"type": "click"}], headers={"X-API-Key": KEY})
        assert r.status_code == 202 and r.json()["accepted"] == ["ev-1"]
    msgs = read_all(s, Topics.from_settings(s).events)
    assert [(m.key, json.loads(m.value)["event_id"]) for m in msgs] == [(b"u9", "ev-1")]


def test_corrupt_update_rejected_last_good_keeps_serving(s: ServingSettings, producer: KafkaProducer) -> None:
    sm = SyntheticModel(20, 100, 4)
    with _app(s) as client:
        _publish(producer, s, sm.snapshot())
        _wait(lambda: _version(client) == 1, "snapshot")
        data = bytearray(sm.delta(5).encode())
        data[-40:] = b"\x00" * 40 + b""  # zeroed float tail still decodes; break the header instead
        data[8:20] = b"#" * 12
        sm.version -= 1  # the corrupt one never counted
        _publish(producer, s, [bytes(data)])
        _wait(lambda: "reco_serving_updates_rejected_total{reason=\"corrupt\"} 1.0" in client.get("/metrics").text, "rejection counted")
        assert client.get("/v1/users/u1/recommendations").json()["version"] == 1
        _publish(producer, s, [sm.delta(5)])
        _wait(lambda: _version(client) == 2, "next good delta")


def test_reco_serve_process_serves_and_exits_cleanly_on_sigterm(s: ServingSettings, producer: KafkaProducer) -> None:
    import os
    import signal
    import subprocess
    import sys

    import httpx

    from streamproc.broker import free_port

    _publish(producer, s, SyntheticModel(10, 50, 4).snapshot())
    port = free_port()
    env = {**os.environ, "RECO_KAFKA_BOOTSTRAP": s.kafka_bootstrap, "RECO_TOPIC_PREFIX": s.topic_prefix, "RECO_HTTP_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "streamproc.cli", "serve"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        def ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(ready, "reco serve ready")
        body = httpx.get(f"http://127.0.0.1:{port}/v1/users/u1/recommendations?k=3").json()
        assert body["version"] == 1 and len(body["items"]) == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        err = proc.communicate()[1]
    assert "Traceback" not in err


def test_a_replica_reads_only_the_tail_of_a_long_history(s: ServingSettings, producer: KafkaProducer) -> None:
    from serving.kafka_io import UpdateFollower
    from serving.metrics import ServingMetrics
    from serving.store import ModelStore

    sm = SyntheticModel(30, 100, 4)
    history = sm.snapshot(max_bytes=4_000) + [sm.delta(5) for _ in range(20)]
    chunks = sm.snapshot(max_bytes=4_000)  # the last snapshot, in several chunks
    assert len(chunks) > 1
    tail = [sm.delta(5) for _ in range(6)]
    _publish(producer, s, history + chunks + tail)
    final = ModelUpdate.decode(tail[-1] if isinstance(tail[-1], bytes) else tail[-1].encode()).header.version
    store = ModelStore(s, ServingMetrics(registry=CollectorRegistry()))
    follower = UpdateFollower(s, store, catch_up_window=4)  # 4 < chunks + tail: the window must grow
    follower.start()
    try:
        _wait(lambda: follower.caught_up.is_set(), "catch-up")
        assert store.version == final
        assert store.swaps == 1 + len(tail)  # the last snapshot and the deltas after it
        assert 0 < follower.caught_up_from <= len(history)  # history before the window was never read
    finally:
        follower.stop()
        follower.join(10)
