"""The HTTP API through starlette's TestClient (no Kafka: updates applied to the store directly)."""

from __future__ import annotations

import json
import time
import warnings
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

with warnings.catch_warnings():  # starlette nags about httpx vs httpx2 in its test client; not ours
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from serving.app import create_app
from serving.bench import SyntheticModel
from serving.metrics import ServingMetrics
from serving.settings import ServingSettings
from serving.store import ModelStore

KEY = "s3cret"


class Sink:
    def __init__(self) -> None:
        self.sent: list[tuple[str, list[Any]]] = []

    async def __call__(self, topic: str, messages: list[Any]) -> None:
        self.sent.append((topic, messages))


def _client(settings: ServingSettings | None = None, *, loaded: bool = True, sink: Sink | None = None) -> tuple[TestClient, ModelStore, SyntheticModel]:
    settings = settings or ServingSettings(api_key=KEY, max_k=50, topic_prefix="x.")
    registry = CollectorRegistry()
    store = ModelStore(settings, ServingMetrics(registry))
    sm = SyntheticModel(20, 100, 4)
    if loaded:
        store.apply(sm.snapshot()[0].encode())
    app = create_app(settings, store, start_kafka=False, registry=registry, event_sink=sink)
    return TestClient(app), store, sm


def _event(**kw: Any) -> dict[str, Any]:
    return {"type": "rating", "user_id": "u1", "item_id": "i1", "rating": 4.0, "event_time": time.time(), **kw}


def test_recommendations_for_known_user() -> None:
    client, store, _ = _client()
    with client:
        r = client.get("/v1/users/u1/recommendations", params={"k": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["version"] == 1 and body["fallback"] is False and body["user_id"] == "u1"
    assert len(body["items"]) == 5 and set(body["items"][0]) == {"item_id", "score"}
    assert [i["item_id"] for i in body["items"]] == [i for i, _ in store.current.recommend("u1", 5).items]


def test_unknown_user_gets_fallback_and_is_counted() -> None:
    client, store, _ = _client()
    with client:
        body = client.get("/v1/users/nobody/recommendations").json()
    assert body["fallback"] is True and len(body["items"]) == 10
    assert store.metrics.registry.get_sample_value("reco_serving_fallbacks_total") == 1


@pytest.mark.parametrize("query,detail", [("k=0", "k_out_of_range"), ("k=51", "k_out_of_range"), ("k=ten", "invalid_k"),
                                          ("exclude_seen=maybe", "invalid_exclude_seen")])
def test_bad_parameters_get_400_with_machine_readable_detail(query: str, detail: str) -> None:
    client, _, _ = _client()
    with client:
        r = client.get(f"/v1/users/u1/recommendations?{query}")
    assert r.status_code == 400 and r.json()["detail"] == detail


def test_no_model_is_503_and_not_ready() -> None:
    client, _, _ = _client(loaded=False)
    with client:
        assert client.get("/v1/users/u1/recommendations").json()["detail"] == "no_model"
        r = client.get("/readyz")
        assert client.get("/healthz").status_code == 200
    assert r.status_code == 503 and "no_model" in r.json()["reasons"]


def test_read_auth_when_required() -> None:
    client, _, _ = _client(ServingSettings(api_key=KEY, read_api_key_required=True))
    with client:
        assert client.get("/v1/users/u1/recommendations").status_code == 401
        assert client.get("/v1/users/u1/recommendations", headers={"X-API-Key": KEY}).status_code == 200


def test_events_require_the_api_key() -> None:
    sink = Sink()
    client, _, _ = _client(sink=sink)
    with client:
        assert client.post("/v1/events", json=[_event()]).status_code == 401
        assert client.post("/v1/events", json=[_event()], headers={"X-API-Key": "wrong"}).status_code == 401
    assert sink.sent == []


def test_writes_refused_without_configured_key_unless_auth_disabled() -> None:
    sink = Sink()
    client, _, _ = _client(ServingSettings(), sink=sink)
    with client:
        r = client.post("/v1/events", json=[_event()], headers={"X-API-Key": ""})
    assert r.status_code == 403 and r.json()["detail"] == "writes_disabled"
    client, _, _ = _client(ServingSettings(auth_disabled=True), sink=sink)
    with client:
        assert client.post("/v1/events", json=[_event()]).status_code == 202


def test_events_batch_publishes_valid_and_reports_errors_by_index() -> None:
    sink = Sink()
    client, _, _ = _client(sink=sink)
    events = [_event(event_id="a"), _event(rating=99, event_id="b"), {"type": "click"}, _event(user_id="u2", event_id="c")]
    with client:
        r = client.post("/v1/events", json={"events": events}, headers={"X-API-Key": KEY})
    assert r.status_code == 202
    body = r.json()
    assert body["accepted"] == ["a", "c"]
    assert [(e["index"], e["field"], e["reason"]) for e in body["errors"]] == [(1, "rating", "out_of_range"), (2, "user_id", "missing_field")]
    (topic, msgs), = sink.sent
    assert topic == "x.events"
    assert [(k, json.loads(v)["event_id"]) for k, v, _ in msgs] == [(b"u1", "a"), (b"u2", "c")]


def test_events_body_limits() -> None:
    sink = Sink()
    client, _, _ = _client(ServingSettings(api_key=KEY, max_body_bytes=2048), sink=sink)
    with client:
        big = client.post("/v1/events", content=b"[" + b" " * 5000 + b"]", headers={"X-API-Key": KEY})
        bad = client.post("/v1/events", content=b"{nope", headers={"X-API-Key": KEY})
        shape = client.post("/v1/events", json={"x": 1}, headers={"X-API-Key": KEY})
        allbad = client.post("/v1/events", json=[{"type": "click"}], headers={"X-API-Key": KEY})
    assert big.status_code == 413 and big.json()["detail"] == "body_too_large"
    assert bad.status_code == 400 and bad.json()["detail"] == "invalid_json"
    assert shape.status_code == 400 and shape.json()["detail"] == "invalid_body"
    assert allbad.status_code == 400 and allbad.json()["errors"][0]["index"] == 0
    assert sink.sent == []


def test_metrics_endpoint_counts_requests_by_route_and_status() -> None:
    client, _, _ = _client()
    with client:
        client.get("/v1/users/u1/recommendations")
        client.get("/v1/users/u1/recommendations?k=0")
        client.get("/nowhere")
        text = client.get("/metrics").text
    assert 'reco_serving_requests_total{route="recommendations",status="200"} 1.0' in text
    assert 'reco_serving_requests_total{route="recommendations",status="400"} 1.0' in text
    assert 'reco_serving_requests_total{route="other",status="404"} 1.0' in text
    assert 'reco_serving_request_duration_seconds_count{route="recommendations"} 2.0' in text
    assert "reco_serving_model_version 1.0" in text and "reco_serving_ready 0.0" in text  # Kafka not started


def test_every_route_has_its_own_label_in_the_request_metrics() -> None:
    sink = Sink()
    client, store, _ = _client(sink=sink)
    key = {"X-API-Key": KEY}
    with client:
        for method, path, kw in [("POST", "/v1/events", {"json": [_event()], "headers": key}),
                                 ("POST", "/v1/items", {"json": [{"item_id": "i9", "title": "t"}], "headers": key}),
                                 ("DELETE", "/v1/users/u1", {"headers": key}), ("DELETE", "/v1/items/i1", {"headers": key}),
                                 ("GET", "/healthz", {}), ("GET", "/readyz", {}), ("GET", "/try", {}),
                                 ("GET", "/dashboard", {}), ("GET", "/v1/items/feedback", {}), ("GET", "/v1/items/i1/feedback", {})]:
            client.request(method, path, **kw)
        client.get("/metrics")
    value = store.metrics.registry.get_sample_value
    assert value("reco_serving_requests_total", {"route": "events", "status": "202"}) == 1
    assert value("reco_serving_requests_total", {"route": "items", "status": "202"}) == 1
    assert value("reco_serving_requests_total", {"route": "erase", "status": "202"}) == 2
    assert value("reco_serving_requests_total", {"route": "healthz", "status": "200"}) == 1
    assert value("reco_serving_requests_total", {"route": "readyz", "status": "503"}) == 1  # Kafka not started
    assert value("reco_serving_requests_total", {"route": "metrics", "status": "200"}) == 1
    assert value("reco_serving_requests_total", {"route": "try", "status": "200"}) == 1
    assert value("reco_serving_requests_total", {"route": "dashboard", "status": "200"}) == 1
    assert value("reco_serving_requests_total", {"route": "item_feedback", "status": "200"}) == 2
    assert [topic for topic, _ in sink.sent] == ["x.events", "x.items", "x.control", "x.control"]


def test_swap_is_visible_to_the_next_request() -> None:
    client, store, sm = _client()
    with client:
        assert client.get("/v1/users/u1/recommendations").json()["version"] == 1
        store.apply(sm.delta(10).encode())
        assert client.get("/v1/users/u1/recommendations").json()["version"] == 2


def test_events_get_503_when_kafka_refuses() -> None:
    async def broken(topic: str, messages: list[Any]) -> None:
        raise ConnectionError("broker down")

    settings = ServingSettings(api_key=KEY)
    app = create_app(settings, start_kafka=False, registry=CollectorRegistry(), event_sink=broken)
    with TestClient(app) as client:
        r = client.post("/v1/events", json=[_event()], headers={"X-API-Key": KEY})
    assert r.status_code == 503 and r.json()["detail"] == "kafka_unavailable"
