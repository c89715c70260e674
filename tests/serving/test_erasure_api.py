"""Erasure on the serving side without Kafka: the DELETE endpoints publish a valid control record
and acknowledge it; a model update that lists a user as expired makes the user unknown and clears
their seen list; the pusher sends nothing for an erased user."""

from __future__ import annotations

import time
import warnings
from typing import Any

from prometheus_client import CollectorRegistry

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from serving.app import create_app
from serving.bench import SyntheticModel
from serving.kafka_io import Pusher
from serving.metrics import ServingMetrics
from serving.settings import ServingSettings
from serving.store import ModelStore
from streamproc.control import ControlRecord
from trainer.updates import ModelUpdate

KEY = "s3cret"


class Sink:
    def __init__(self) -> None:
        self.sent: list[tuple[str, list[Any]]] = []

    async def __call__(self, topic: str, messages: list[Any]) -> None:
        self.sent.append((topic, messages))


def _setup() -> tuple[TestClient, ModelStore, Sink, CollectorRegistry]:
    settings = ServingSettings(api_key=KEY, topic_prefix="x.")
    registry = CollectorRegistry()
    store = ModelStore(settings, ServingMetrics(registry))
    store.apply(SyntheticModel(20, 100, 4).snapshot()[0].encode())
    sink = Sink()
    return TestClient(create_app(settings, store, start_kafka=False, registry=registry, event_sink=sink)), store, sink, registry


def test_delete_user_and_item_publish_control_records_and_acknowledge() -> None:
    client, _, sink, registry = _setup()
    with client:
        r = client.delete("/v1/users/u3", headers={"X-API-Key": KEY})
        r2 = client.delete("/v1/items/a%2Fb", headers={"X-API-Key": KEY})  # ids may hold a slash
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "accepted" and body["kind"] == "user" and body["user_id"] == "u3"
    assert body["erasure_id"] and body["acknowledged_at"] >= body["requested_at"] and body["erases"]
    topic, [(key, value, _)] = sink.sent[0]
    rec = ControlRecord.parse(value)
    assert topic == "x.control" and key == b"u3" and (rec.kind, rec.id, rec.erasure_id) == ("user", "u3", body["erasure_id"])
    assert r2.status_code == 202 and ControlRecord.parse(sink.sent[1][1][0][1]).id == "a/b" and r2.json()["item_id"] == "a/b"
    assert registry.get_sample_value("reco_serving_erasure_requests_total", {"kind": "item"}) == 1


def test_delete_needs_the_api_key_and_a_valid_id() -> None:
    client, _, sink, _ = _setup()
    with client:
        assert client.delete("/v1/users/u3").status_code == 401
        assert client.delete("/v1/users/u3", headers={"X-API-Key": "wrong"}).status_code == 401
        bad = client.delete("/v1/users/%01x", headers={"X-API-Key": KEY})
        long = client.delete("/v1/items/" + "x" * 300, headers={"X-API-Key": KEY})
    assert bad.status_code == 400 and bad.json()["detail"] == "invalid_user_id" and bad.json()["field"] == "user_id"
    assert long.status_code == 400 and long.json()["detail"] == "invalid_item_id"
    assert sink.sent == []


def test_writes_disabled_without_a_configured_key() -> None:
    settings = ServingSettings(topic_prefix="x.")
    with TestClient(create_app(settings, start_kafka=False, registry=CollectorRegistry(), event_sink=Sink())) as client:
        r = client.delete("/v1/users/u3")
    assert r.status_code == 403 and r.json()["detail"] == "writes_disabled"


def _delta(store: ModelStore, **header: Any) -> None:
    v = store.current.version
    res = store.apply(ModelUpdate({"version": v + 1, "kind": "delta", "base_version": v, **header}, {}).encode())
    assert res.swapped, res


def test_expired_user_is_unknown_and_its_seen_list_is_gone() -> None:
    client, store, _, _ = _setup()
    now = time.time()
    _delta(store, published=[["u1", "i5", now], ["u2", "i6", now]])
    assert store.current.seen["u1"] == ("i5",) and store.current.has_user("u1")
    _delta(store, expired_user_ids=["u1"])
    model = store.current
    assert not model.has_user("u1") and "u1" not in model.seen and model.seen["u2"] == ("i6",)
    assert model.recommend("u1", 5).fallback
    with client:
        assert client.get("/v1/users/u1/recommendations").json()["fallback"] is True


def test_pusher_sends_nothing_for_an_erased_user() -> None:
    _, store, _, registry = _setup()
    sent: list[Any] = []
    pusher = Pusher(store.settings, store, sent.extend, ServingMetrics(CollectorRegistry()))
    _delta(store, expired_user_ids=["u1"])
    pusher._due = {"u1": 0.0, "u2": 0.0}
    pusher._push(["u1", "u2"], time.monotonic())
    assert [m[0] for m in sent] == [b"u2"]


def test_a_snapshot_without_a_user_drops_its_seen_list() -> None:
    """A replica that missed the expiring delta (a gap, then the next snapshot) forgets the seen list too."""
    _, store, _, _ = _setup()
    now = time.time()
    _delta(store, published=[["u1", "i5", now], ["u2", "i6", now]])
    sm = SyntheticModel(20, 100, 4)
    sm.version = store.current.version
    sm.user_ids[1] = "someone-else"  # the snapshot no longer holds u1
    for part in sm.snapshot():
        store.apply(part.encode())
    model = store.current
    assert not model.has_user("u1") and "u1" not in model.seen and model.seen["u2"] == ("i6",)
