"""Feedback analysis endpoints: the trainer's ItemFeedback tensors through a model update to the API."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

with warnings.catch_warnings():  # starlette nags about httpx vs httpx2 in its test client; not ours
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from serving.app import create_app
from serving.metrics import ServingMetrics
from serving.settings import ServingSettings
from serving.store import ModelStore
from trainer.feedback import FEEDBACK_COLUMNS, ItemFeedback
from trainer.updates import ModelUpdate

KEY = "s3cret"
COMMENT, RATING = 2, 0
ITEMS = ["falls", "few", "quiet", "steady", "rises", "dips/a bit"]
rng = np.random.default_rng(11)
# per item: (sentiment of each comment in order, ratings)
FEED: dict[str, tuple[np.ndarray, list[float]]] = {
    "falls": (np.r_[rng.normal(4.4, 0.3, 40), rng.normal(1.8, 0.3, 15)], [5.0, 4.0, 1.0]),
    "few": (np.array([4.0, 2.0, 3.5]), [3.0]),
    "quiet": (np.zeros(0), []),
    "steady": (rng.normal(3.5, 0.3, 80), [4.0, 3.0]),
    "rises": (np.r_[rng.normal(2.0, 0.3, 40), rng.normal(4.5, 0.3, 15)], []),
    "dips/a bit": (np.r_[rng.normal(4.0, 0.3, 40), rng.normal(3.6, 0.3, 10)], []),
}


def _feedback() -> ItemFeedback:
    fb = ItemFeedback()
    for row, item in enumerate(ITEMS):
        sent, ratings = FEED[item]
        if len(sent):
            fb.update(np.full(len(sent), row), np.full(len(sent), COMMENT), np.full(len(sent), np.nan), sent)
        if ratings:
            fb.update(np.full(len(ratings), row), np.full(len(ratings), RATING), np.array(ratings), np.full(len(ratings), np.nan))
    return fb


def _snapshot(fb: ItemFeedback, version: int = 1) -> ModelUpdate:
    n = len(ITEMS)
    return ModelUpdate({"version": version, "kind": "snapshot", "global_mean": 3.5, "user_ids": ["u1"], "item_ids": ITEMS},
                       {"user_factors": np.ones((1, 2), np.float32), "user_bias": np.zeros(1, np.float32),
                        "item_factors": np.ones((n, 2), np.float32), "item_bias": np.zeros(n, np.float32),
                        "item_popularity": np.ones(n, np.float32), **fb.export(np.arange(n))})


def _client(settings: ServingSettings | None = None, *, loaded: bool = True) -> tuple[TestClient, ModelStore]:
    settings = settings or ServingSettings(api_key=KEY, topic_prefix="x.")
    registry = CollectorRegistry()
    store = ModelStore(settings, ServingMetrics(registry))
    app = create_app(settings, store, start_kafka=False, registry=registry)
    if loaded:
        assert store.apply(_snapshot(_feedback()).encode()).swapped
    return TestClient(app), store


def _get(client: TestClient, path: str, **params: Any) -> Any:
    r = client.get(path, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_one_item_counts_and_means() -> None:
    client, _ = _client()
    with client:
        falls = _get(client, "/v1/items/falls/feedback")
        few = _get(client, "/v1/items/few/feedback")
        quiet = _get(client, "/v1/items/quiet/feedback")
    sent = FEED["falls"][0]
    assert falls["item_id"] == "falls" and falls["version"] == 1
    assert falls["comments"] == falls["comments_scored"] == len(sent) and falls["ratings"] == 3
    assert falls["sentiment_mean"] == pytest.approx(sent.mean(), abs=1e-3)
    assert falls["rating_mean"] == pytest.approx(10 / 3, abs=1e-3)
    # the recent window reads the last comments (~1.8), far below the all-time mean (~3.7)
    assert falls["sentiment_recent"] < 2.6 < falls["sentiment_mean"]
    assert falls["trend"] < -1.0 and falls["trend_z"] < -4 and falls["falling"] is True
    # three comments: means, but no trend yet
    assert few["comments"] == 3 and few["sentiment_mean"] == pytest.approx(9.5 / 3, abs=1e-3)
    assert few["rating_mean"] == 3.0 and few["trend"] is None and few["falling"] is False
    # a known item nobody commented on: zero counts and nulls, not an error
    assert quiet == {"item_id": "quiet", "version": 1, "comments": 0, "comments_scored": 0, "sentiment_mean": None,
                     "sentiment_recent": None, "ratings": 0, "rating_mean": None, "trend": None, "trend_z": None,
                     "falling": False}


def test_item_ids_with_a_slash_and_unknown_items() -> None:
    client, _ = _client()
    with client:
        assert _get(client, "/v1/items/dips/a bit/feedback")["comments"] == 50
        r = client.get("/v1/items/nope/feedback")
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/json")
    assert r.json()["detail"] == "unknown_item" and "nope" in r.json()["message"]


def test_lists_are_ordered() -> None:
    client, _ = _client()
    with client:
        falling = _get(client, "/v1/items/feedback", order="falling")
        default = _get(client, "/v1/items/feedback")
        rising = _get(client, "/v1/items/feedback", order="rising", limit=1)
        most = _get(client, "/v1/items/feedback", order="most_commented", limit=3)
        steady = _get(client, "/v1/items/steady/feedback")
    trends = [x["trend"] for x in falling["items"]]
    assert falling["order"] == "falling" and falling["version"] == 1 and default == falling
    assert [x["item_id"] for x in falling["items"]][:2] == ["falls", "dips/a bit"]
    assert trends == sorted(trends) and all(t < 0 for t in trends)
    assert "rises" not in [x["item_id"] for x in falling["items"]] and "few" not in [x["item_id"] for x in falling["items"]]
    assert [x["item_id"] for x in rising["items"]] == ["rises"] and rising["items"][0]["falling"] is False
    assert [x["item_id"] for x in most["items"]] == ["steady", "falls", "rises"]  # 80, 55, 55 (ties: older item first)
    assert most["items"][0] == {k: v for k, v in steady.items() if k != "version"}  # the same entry as the item's own


@pytest.mark.parametrize("query, field, detail", [
    ("order=worst", "order", "invalid_order"), ("limit=0", "limit", "limit_out_of_range"),
    ("limit=1001", "limit", "limit_out_of_range"), ("limit=ten", "limit", "invalid_limit"),
    ("order=falling&limit=-3", "limit", "limit_out_of_range"),
])
def test_bad_parameters_are_400_naming_the_parameter(query: str, field: str, detail: str) -> None:
    client, _ = _client()
    with client:
        r = client.get(f"/v1/items/feedback?{query}")
    assert r.status_code == 400 and r.json()["detail"] == detail and r.json()["field"] == field
    assert field in r.json()["message"]


def test_no_model_yet_is_503() -> None:
    client, _ = _client(loaded=False)
    with client:
        assert client.get("/v1/items/falls/feedback").json()["detail"] == "no_model"
        assert client.get("/v1/items/feedback").status_code == 503


def test_reads_need_the_key_when_configured() -> None:
    client, _ = _client(ServingSettings(api_key=KEY, read_api_key_required=True, topic_prefix="x."))
    with client:
        assert client.get("/v1/items/falls/feedback").status_code == 401
        assert client.get("/v1/items/feedback").json()["detail"] == "unauthorized"
        assert client.get("/v1/items/falls/feedback", headers={"X-API-Key": KEY}).status_code == 200
        # the dashboard (no key) shows the counts but not the item ids
        fb = client.get("/dashboard/data").json()["feedback"]
    assert fb["falling"] >= 1 and fb["top_falling"] == []


def test_a_delta_moves_the_numbers_and_expired_items_disappear() -> None:
    client, store = _client()
    fb = _feedback()
    fb.update(np.full(5, 2), np.full(5, COMMENT), np.full(5, np.nan), np.full(5, 1.0))  # "quiet" gets comments
    delta = ModelUpdate({"version": 2, "kind": "delta", "base_version": 1, "user_ids": [], "item_ids": ["quiet"],
                         "expired_item_ids": ["falls"]}, fb.export(np.array([2])))
    assert store.apply(delta.encode()).swapped
    with client:
        quiet = _get(client, "/v1/items/quiet/feedback")
        assert client.get("/v1/items/falls/feedback").status_code == 404
        listed = [x["item_id"] for x in _get(client, "/v1/items/feedback", order="most_commented", limit=100)["items"]]
    assert quiet["comments"] == 5 and quiet["sentiment_mean"] == 1.0 and quiet["version"] == 2
    assert "falls" not in listed and "quiet" in listed


def test_gauges_and_dashboard_summary_follow_the_served_model() -> None:
    client, store = _client()
    reg = store.metrics.registry
    fb = _feedback()
    flagged = int(fb.columns(np.arange(len(ITEMS)))[:, FEEDBACK_COLUMNS.index("falling")].sum())
    assert flagged >= 1
    assert reg.get_sample_value("reco_serving_items_sentiment_falling") == flagged
    assert reg.get_sample_value("reco_serving_items_commented") == 5  # every item but "quiet"
    assert reg.get_sample_value("reco_serving_items_by_sentiment", {"le": "+Inf"}) == 5
    # "rises" has mean ~2.7, the rest above 3: cumulative counts
    assert reg.get_sample_value("reco_serving_items_by_sentiment", {"le": "3.0"}) == 1
    assert reg.get_sample_value("reco_serving_items_sentiment_trend_min") < -1.0
    with client:
        summary = client.get("/dashboard/data").json()["feedback"]
    assert summary["version"] == 1 and summary["items"] == len(ITEMS) and summary["commented"] == 5
    assert summary["falling"] == flagged and sum(summary["counts"]) == 5 and summary["buckets"][-1] == "+Inf"
    assert summary["top_falling"][0]["item_id"] == "falls"


def test_an_update_with_a_malformed_feedback_tensor_is_rejected() -> None:
    _, store = _client()
    bad = ModelUpdate({"version": 2, "kind": "delta", "base_version": 1, "user_ids": [], "item_ids": ["few"]},
                      {"item_feedback": np.zeros((1, 4), np.float32)})
    assert store.apply(bad.encode()).reason == "shape"
    assert store.version == 1


def _comment_batch(item_ids: list[str], vecs: np.ndarray, ratings: np.ndarray, t0: float) -> Any:
    from streamproc.examples import KIND_COMMENT, ExampleBatch

    n = len(item_ids)
    return ExampleBatch.build(event_ids=[f"e{t0 + j}" for j in range(n)], user_ids=[f"u{int(t0) + j}" for j in range(n)],
                              item_ids=item_ids, kinds=[KIND_COMMENT] * n, targets=ratings, event_times=t0 + np.arange(n),
                              published=t0 + np.arange(n), processed=t0 + np.arange(n), embeddings=vecs.astype(np.float32),
                              emb_rows=list(range(n)))


def test_trainer_model_to_endpoint_an_item_whose_comments_turn_negative() -> None:
    """HybridMF learns the sentiment head from rated comments, reads unrated ones on two items, and
    its model update tells serving which item's comments turned negative; checkpoints keep it."""
    from trainer.model import HybridMF

    dim = 16
    r = np.random.default_rng(2)
    pos, neg = np.eye(dim)[0], np.eye(dim)[1]

    def texts(k: int, good: bool) -> np.ndarray:  # "embeddings" of positive or negative comments
        v = np.where(good, pos, neg) + 0.15 * r.standard_normal((k, dim))
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    model = HybridMF(n_factors=4, text_dim=dim, seed=1)
    good = r.random(200) < 0.5  # rated comments on other items teach the head what the text says
    model.learn_batch(_comment_batch([f"other{j % 7}" for j in range(200)], texts(200, True) * good[:, None]
                                     + texts(200, False) * ~good[:, None], np.where(good, 5.0, 1.0), 0.0))
    t = 1000.0
    for step in range(60):  # unrated comments: "cafe" turns negative after 40, "diner" stays positive
        vecs = np.vstack([texts(1, step < 40), texts(1, True)])
        model.learn_batch(_comment_batch(["cafe", "diner"], vecs, np.full(2, np.nan), t))
        t += 10
    header, tensors = model.export(full=True)
    meta, arrays = model.state()
    again = HybridMF.from_state(meta, arrays)
    assert np.array_equal(again.export(full=True)[1]["item_feedback"], tensors["item_feedback"])

    settings = ServingSettings(api_key=KEY, topic_prefix="x.")
    registry = CollectorRegistry()
    store = ModelStore(settings, ServingMetrics(registry))
    client = TestClient(create_app(settings, store, start_kafka=False, registry=registry))
    snap = ModelUpdate({"version": 1, "kind": "snapshot", **header}, tensors)
    assert store.apply(snap.encode()).swapped
    with client:
        cafe = _get(client, "/v1/items/cafe/feedback")
        diner = _get(client, "/v1/items/diner/feedback")
        falling = _get(client, "/v1/items/feedback", order="falling", limit=5)["items"]
    assert cafe["comments"] == cafe["comments_scored"] == 60 and cafe["ratings"] == 0
    assert diner["sentiment_mean"] > 4.0 and not diner["falling"]
    assert cafe["sentiment_recent"] < 2.5 < 4.0 < diner["sentiment_recent"]
    assert cafe["falling"] and falling[0]["item_id"] == "cafe"
    assert registry.get_sample_value("reco_serving_items_sentiment_falling") == 1


_FUZZ_CLIENT: TestClient | None = None


def _fuzz_client() -> TestClient:
    global _FUZZ_CLIENT
    if _FUZZ_CLIENT is None:
        _FUZZ_CLIENT = _client()[0]
    return _FUZZ_CLIENT


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(order=st.one_of(st.sampled_from(["falling", "rising", "most_commented"]), st.text(max_size=30)),
       limit=st.one_of(st.integers(-5, 2000).map(str), st.text(max_size=12)), item=st.text(min_size=1, max_size=60))
def test_any_parameters_or_item_id_get_json_never_a_500(order: str, limit: str, item: str) -> None:
    from urllib.parse import quote

    client = _fuzz_client()
    r = client.get("/v1/items/feedback", params={"order": order, "limit": limit})
    assert r.status_code in (200, 400) and r.headers["content-type"].startswith("application/json")
    if r.status_code == 400:
        assert r.json()["field"] in ("order", "limit")
    else:
        assert len(r.json()["items"]) <= int(limit)
    r = client.get(f"/v1/items/{quote(item, safe='')}/feedback")
    assert r.status_code in (200, 404) and isinstance(r.json(), dict)
