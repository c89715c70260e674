"""The live catalogue and request-time rules: filtered top-k, unavailable items, the HTTP/Kafka parameters."""

from __future__ import annotations

import json
import time
import warnings
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from serving.app import create_app
from serving.bench import SyntheticModel
from serving.catalog import Catalog, RuleError, Rules
from serving.kafka_io import answer_request
from serving.metrics import ServingMetrics
from serving.model import ServingModel
from serving.settings import ServingSettings
from serving.store import ModelStore
from trainer.updates import ModelUpdate

KEY = "k3y"
NOW = time.time()


def _record(item_id: str, categories: list[str], available: bool = True, t: float = NOW, title: str | None = None) -> bytes:
    return json.dumps({"item_id": item_id, "title": title or f"Title {item_id}", "categories": categories,
                       "available": available, "updated_at": t}).encode()


def _setup(n_items: int = 300, candidates: int = 0, seed: int = 0) -> tuple[ServingModel, Catalog, list[str]]:
    sm = SyntheticModel(30, n_items, 8, seed=seed, candidates=candidates)
    seen = [[f"u{u}", f"i{(u * 7 + j) % n_items}", 1.0] for u in range(30) for j in range(5)]
    model = ServingModel.build(None, sm.snapshot(max_bytes=1 << 30, published=seen))
    cats = ["a", "b", "c", "d", "e"]
    catalog = Catalog()
    rng = np.random.default_rng(seed)
    for i in range(n_items):
        picked = [c for c in cats if rng.random() < 0.15]
        catalog.apply_json(_record(f"i{i}", picked, available=bool(rng.random() > 0.1)))
    return model, catalog, cats


def _eligible(model: ServingModel, catalog: Catalog, user: str, rules: Rules, exclude_seen: bool = True) -> set[str]:
    seen = set(model.seen.get(user, ())) if exclude_seen else set()
    return {i for i in model.item_ids() if catalog.available(i) and i not in rules.exclude and i not in seen
            and (not rules.categories or set(rules.categories) & set(catalog.categories(i)))}


@pytest.mark.parametrize("candidates", [0, 20])
def test_filtered_answers_are_the_exact_top_k_of_the_eligible_items(candidates: int) -> None:
    model, catalog, cats = _setup(candidates=candidates)
    rng = np.random.default_rng(1)
    ids = model.item_ids()
    checked_full = 0
    for n in range(200):
        user = f"u{n % 30}" if n % 5 else f"stranger{n}"  # unknown users: the popularity fallback
        cat = list(rng.choice(cats, size=int(rng.integers(0, 3)), replace=False))
        ex = list(rng.choice(ids, size=int(rng.integers(0, 60)), replace=False))
        rules = Rules.build(cat, ex)
        k = int(rng.integers(1, 40))
        out = catalog.recommend(model, user, k, True, rules)
        got = [i["item_id"] for i in out["items"]]
        eligible = _eligible(model, catalog, user, rules)
        assert len(got) == min(k, len(eligible)), (user, k, len(eligible))  # never short while k eligible exist
        assert set(got) <= eligible and len(set(got)) == len(got)
        if not out["fallback"]:  # best first, and nothing eligible scores higher than the last answer
            el = sorted(eligible)
            scores = dict(zip(el, model.score(user, el), strict=True))
            assert [i["score"] for i in out["items"]] == sorted((i["score"] for i in out["items"]), reverse=True)
            if len(got) == k and len(eligible) > k:
                rest = max(s for i, s in scores.items() if i not in got)
                assert rest <= out["items"][-1]["score"] + 1e-5
                checked_full += 1
    assert checked_full > 20


def test_unavailable_items_are_never_served_and_come_back_when_available() -> None:
    model, catalog, _ = _setup()
    everything = model.n_items
    hidden = {i for i in model.item_ids() if not catalog.available(i)}
    assert hidden
    for user in ["u1", "u2", "nobody"]:
        got = {i["item_id"] for i in catalog.recommend(model, user, everything, False)["items"]}
        assert not got & hidden and len(got) == everything - len(hidden)
    item = sorted(hidden)[0]
    catalog.apply_json(_record(item, [], available=True, t=NOW + 1))
    assert item in {i["item_id"] for i in catalog.recommend(model, "u1", everything, False)["items"]}
    catalog.apply_json(_record(item, [], available=False, t=NOW - 100))  # older than what the catalogue holds: ignored
    assert catalog.available(item)


def test_exclude_and_tombstone() -> None:
    model, catalog, _ = _setup()
    first = [i["item_id"] for i in catalog.recommend(model, "u3", 5, True)["items"]]
    again = [i["item_id"] for i in catalog.recommend(model, "u3", 5, True, Rules.build(exclude=[",".join(first[:3])]))["items"]]
    assert not set(first[:3]) & set(again) and len(again) == 5 and again[:2] == first[3:]
    hidden = sorted(i for i in model.item_ids() if not catalog.available(i))[0]
    catalog.apply_json(None, hidden.encode())  # a tombstone: the item leaves the catalogue (no longer marked unavailable)
    assert catalog.available(hidden) and hidden not in catalog.category_members(["a", "b", "c", "d", "e"])


def test_fields_and_category_members_follow_updates() -> None:
    model, catalog, _ = _setup()
    catalog.apply_json(_record("i5", ["zz"], title="Heat (1995)", t=NOW + 5))
    out = catalog.recommend(model, "u9", 3, True, Rules.build(["zz"], fields=["title,categories"]))
    assert out["items"] and out["items"][0]["item_id"] == "i5"
    assert out["items"][0]["title"] == "Heat (1995)" and out["items"][0]["categories"] == ["zz"]
    catalog.apply_json(_record("i5", ["yy"], t=NOW + 6))
    assert catalog.recommend(model, "u9", 3, True, Rules.build(["zz"]))["items"] == []


@pytest.mark.parametrize(("kw", "field"), [({"category": ["a,,b"]}, "category"), ({"category": ["x" * 101]}, "category"),
                                           ({"exclude": [""]}, "exclude"), ({"exclude": [",".join(f"i{n}" for n in range(1001))]}, "exclude"),
                                           ({"fields": ["title,price"]}, "fields"), ({"category": ["a\tb"]}, "category")])
def test_bad_rules_name_the_parameter(kw: dict[str, Any], field: str) -> None:
    with pytest.raises(RuleError) as info:
        Rules.from_query(kw)
    assert info.value.field == field


def _app(sink: list[Any] | None = None) -> tuple[TestClient, ModelStore, Catalog, CollectorRegistry]:
    settings = ServingSettings(api_key=KEY, max_k=500, topic_prefix="c.")
    registry = CollectorRegistry()
    store = ModelStore(settings, ServingMetrics(registry))
    sm = SyntheticModel(10, 50, 4)
    store.apply(sm.snapshot()[0].encode())
    catalog = Catalog()
    for i in range(50):
        catalog.apply_json(_record(f"i{i}", ["even" if i % 2 == 0 else "odd", *(["ten"] if i % 10 == 0 else [])], available=i != 4))

    async def event_sink(topic: str, messages: list[Any]) -> None:
        if sink is not None:
            sink.append((topic, messages))

    app = create_app(settings, store, start_kafka=False, registry=registry, catalog=catalog, event_sink=event_sink)
    return TestClient(app), store, catalog, registry


def test_http_rules_filter_and_count() -> None:
    client, _, _, registry = _app()
    with client:
        r = client.get("/v1/users/u1/recommendations", params=[("k", "20"), ("category", "ten"), ("category", "odd"),
                                                              ("exclude", "i1,i3"), ("fields", "title,categories"), ("exclude_seen", "false")])
        body = r.json()
        metrics_text = client.get("/metrics").text
    assert r.status_code == 200, body
    got = [i["item_id"] for i in body["items"]]
    assert len(got) == 20 and "i1" not in got and "i3" not in got and "i4" not in got
    assert all(int(i[1:]) % 2 == 1 or int(i[1:]) % 10 == 0 for i in got)
    assert all(set(i) == {"item_id", "score", "title", "categories"} for i in body["items"])
    assert registry.get_sample_value("reco_serving_filtered_requests_total", {"rule": "category"}) == 1
    assert registry.get_sample_value("reco_serving_catalog_unavailable_items") == 1
    assert "reco_serving_catalog_items 50.0" in metrics_text


@pytest.mark.parametrize(("params", "field"), [({"category": ""}, "category"), ({"exclude": "a,,b"}, "exclude"),
                                               ({"fields": "price"}, "fields")])
def test_http_bad_rules_are_400_naming_the_parameter(params: dict[str, str], field: str) -> None:
    client, _, _, _ = _app()
    with client:
        r = client.get("/v1/users/u1/recommendations", params=params)
    assert r.status_code == 400 and r.json()["field"] == field and r.json()["detail"] == f"invalid_{field}"


def test_post_items_validates_and_publishes_keyed_by_item_id() -> None:
    sent: list[Any] = []
    client, _, _, _ = _app(sent)
    with client:
        assert client.post("/v1/items", json=[{"item_id": "n1", "title": "New"}]).status_code == 401
        ok = client.post("/v1/items", headers={"X-API-Key": KEY},
                         json={"items": [{"item_id": "n1", "title": "New", "categories": ["x"]}, {"item_id": "n2", "title": ""},
                                         {"item_id": "n3", "title": "T", "colour": "red"}]})
        bad = client.post("/v1/items", headers={"X-API-Key": KEY}, json=[{"title": "no id"}])
    assert ok.status_code == 202 and ok.json()["accepted"] == ["n1"]
    assert [(e["index"], e["field"]) for e in ok.json()["errors"]] == [(1, "title"), (2, "colour")]
    (topic, messages), = sent
    assert topic == "c.items" and messages[0][0] == b"n1" and json.loads(messages[0][1])["categories"] == ["x"]
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "item_id"


def test_kafka_request_rules() -> None:
    settings = ServingSettings()
    store = ModelStore(settings, ServingMetrics(CollectorRegistry()))
    store.apply(SyntheticModel(5, 40, 4).snapshot()[0].encode())
    catalog = Catalog()
    for i in range(40):
        catalog.apply_json(_record(f"i{i}", ["x"] if i < 10 else ["y"], available=i != 0))
    req = {"request_id": "r1", "user_id": "u1", "k": 10, "category": ["x"], "exclude": "i1", "fields": ["title"]}
    (key, value, headers), status = answer_request(json.dumps(req).encode(), store, settings, catalog)
    body = json.loads(value)
    assert status == "ok" and key == b"u1"
    assert sorted(i["item_id"] for i in body["items"]) == sorted(f"i{n}" for n in range(2, 10))  # 8 eligible: all of them
    assert all(i["title"].startswith("Title") for i in body["items"])
    (_, value, _), status = answer_request(json.dumps({**req, "category": [3]}).encode(), store, settings, catalog)
    assert status == "invalid" and json.loads(value)["error"] == "invalid_category"


def test_delta_new_items_join_their_category() -> None:
    model, catalog, _ = _setup(n_items=20)
    catalog.apply_json(_record("new1", ["fresh"]))
    assert catalog.recommend(model, "u1", 5, True, Rules.build(["fresh"]))["items"] == []  # not in the model yet
    delta = ModelUpdate({"version": model.version + 1, "kind": "delta", "base_version": model.version, "user_ids": [],
                         "item_ids": ["new1"]},
                        {"item_factors": np.ones((1, 8), np.float32), "item_bias": np.zeros(1, np.float32)})
    model2 = ServingModel.build(model, [delta])
    assert [i["item_id"] for i in catalog.recommend(model2, "u1", 5, True, Rules.build(["fresh"]))["items"]] == ["new1"]


def test_popularity_before_the_first_model_obeys_the_rules() -> None:
    settings = ServingSettings(topic_prefix="c.")
    catalog = Catalog()
    for n in range(6):
        catalog.apply_json(_record(f"p{n}", ["x"] if n % 2 else ["y"], available=n != 5))
    app = create_app(settings, start_kafka=False, registry=CollectorRegistry(), catalog=catalog)
    for n, count in enumerate([9, 8, 7, 6, 5, 4]):
        for c in range(count):
            app.state.early.observe(f"someone{c}", f"p{n}")
    with TestClient(app) as client:
        plain = client.get("/v1/users/new/recommendations", params={"k": 6}).json()
        cat = client.get("/v1/users/new/recommendations", params={"k": 6, "category": "x", "exclude": "p1", "fields": "title"}).json()
    assert plain["version"] is None and [i["item_id"] for i in plain["items"]] == ["p0", "p1", "p2", "p3", "p4"]  # p5 hidden
    assert [(i["item_id"], i["title"]) for i in cat["items"]] == [("p3", "Title p3")]
