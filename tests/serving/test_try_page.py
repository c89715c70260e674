"""``/try`` and the answers before the first model, through starlette's TestClient (no Kafka)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

with warnings.catch_warnings():  # starlette nags about httpx vs httpx2 in its test client; not ours
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from serving.app import create_app
from serving.bench import SyntheticModel
from serving.catalog import Catalog, CatalogError
from serving.metrics import ServingMetrics
from serving.settings import ServingSettings
from serving.store import ModelStore
from trainer.updates import ModelUpdate

KEY = "demo-key"


def _app(settings: ServingSettings | None = None, *, try_writes: bool = False, catalog: Catalog | None = None):  # type: ignore[no-untyped-def]
    settings = settings or ServingSettings(api_key=KEY, topic_prefix="t.")
    registry = CollectorRegistry()
    store = ModelStore(settings, ServingMetrics(registry))
    app = create_app(settings, store, start_kafka=False, registry=registry, catalog=catalog, try_writes=try_writes)
    return app, store


def test_before_any_event_recommendations_are_503_no_model() -> None:
    app, _ = _app()
    with TestClient(app) as client:
        r = client.get("/v1/users/u1/recommendations")
    assert r.status_code == 503 and r.json()["detail"] == "no_model"


def test_before_the_first_model_events_seen_give_popularity_so_far_and_readyz_stays_503() -> None:
    app, store = _app()
    for user, item in [("a", "i1"), ("b", "i1"), ("c", "i1"), ("a", "i2"), ("b", "i2"), ("c", "i3")]:
        app.state.early.observe(user, item)
    with TestClient(app) as client:
        r = client.get("/v1/users/newcomer/recommendations", params={"k": 2})
        seen = client.get("/v1/users/a/recommendations", params={"k": 5}).json()
        ready = client.get("/readyz")
    assert r.status_code == 200
    body = r.json()
    assert body["fallback"] is True and body["version"] is None
    assert [i["item_id"] for i in body["items"]] == ["i1", "i2"] and body["items"][0]["score"] == 3.0
    assert [i["item_id"] for i in seen["items"]] == ["i3"]  # exclude_seen: a touched i1 and i2
    assert ready.status_code == 503 and "no_model" in ready.json()["reasons"]  # still honest: no model


def test_once_a_model_is_loaded_the_model_answers_not_the_early_counts() -> None:
    app, store = _app()
    app.state.early.observe("a", "early-item")
    store.apply(SyntheticModel(5, 30, 4).snapshot()[0].encode())
    with TestClient(app) as client:
        body = client.get("/v1/users/nobody/recommendations", params={"k": 3}).json()
    assert body["version"] == 1 and body["fallback"] is True
    assert "early-item" not in [i["item_id"] for i in body["items"]]


def test_state_has_titles_categories_and_when_feedback_became_visible() -> None:
    catalog = Catalog({"i0": {"title": "Quiet Years (1990)", "category": "Drama"}}, [{"user_id": "u1", "likes": ["Drama"]}], "test")
    app, store = _app(catalog=catalog)
    sm = SyntheticModel(5, 30, 4)
    store.apply(sm.snapshot()[0].encode())
    delta = ModelUpdate({"version": 2, "kind": "delta", "base_version": 1, "user_ids": [], "item_ids": [],
                         "published": [["u1", "i0", 1000.0]]}, {})
    store.apply(delta.encode())
    with TestClient(app) as client:
        st = client.get("/try/state", params={"user": "u1", "k": 30, "users": 1}).json()
        page = client.get("/try")
    items = {i["item_id"]: i for i in st["items"]}
    assert st["version"] == 2 and st["model"] is True
    assert "i0" not in items  # learned feedback on i0: excluded as seen
    assert all(set(i) >= {"item_id", "score", "title", "category"} for i in st["items"])
    assert st["feedback"][0]["item_id"] == "i0" and st["feedback"][0]["version"] == 2
    assert st["feedback"][0]["title"] == "Quiet Years (1990)" and st["feedback"][0]["latency_s"] > 0
    assert st["users"] == [{"user_id": "u1", "likes": ["Drama"]}]
    assert page.status_code == 200 and "try/static/try.js" in page.text
    assert page.headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "http" not in "".join(page.text.split("http-equiv"))  # self-contained: no external URL


def test_session_hands_the_key_only_to_the_same_origin_and_only_with_try_writes() -> None:
    app, _ = _app(try_writes=True)
    with TestClient(app) as client:
        same = client.get("/try/session", headers={"Sec-Fetch-Site": "same-origin"})
        cross = client.get("/try/session", headers={"Sec-Fetch-Site": "cross-site"})
        other_origin = client.get("/try/session", headers={"Origin": "http://evil.example"})
    assert same.json() == {"writes": "key", "api_key": KEY, "read_key_required": False}
    assert cross.status_code == 403 and KEY not in cross.text
    assert other_origin.status_code == 403 and KEY not in other_origin.text
    app, _ = _app(try_writes=False)
    with TestClient(app) as client:
        ask = client.get("/try/session", headers={"Sec-Fetch-Site": "same-origin"})
    assert ask.json()["writes"] == "ask" and KEY not in ask.text


def test_static_files_are_self_contained() -> None:
    static = Path(__file__).resolve().parents[2] / "serving" / "static"
    for name in ("try.html", "try.js", "try.css"):
        text = (static / name).read_text()
        assert "://" not in text.replace("http-equiv", ""), f"{name} refers to an external URL"


def test_catalog_file_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read"):
        Catalog.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CatalogError, match="not JSON"):
        Catalog.load(bad)
    bad.write_text(json.dumps({"items": []}))
    with pytest.raises(CatalogError, match="expected"):
        Catalog.load(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"items": {"7": {"title": "Seven", "category": "Drama"}}, "users": [{"user_id": "u"}]}))
    c = Catalog.load(good)
    assert c.describe("7") == {"title": "Seven", "category": "Drama"} and c.users == [{"user_id": "u"}]


def test_reco_serve_with_a_bad_catalog_is_one_line(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("RECO_")}
    out = subprocess.run([sys.executable, "-m", "streamproc.cli", "serve", "--catalog", str(tmp_path / "nope.json")],
                         capture_output=True, text=True, timeout=60, env={**env, "RECO_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert lines[-1].startswith("reco: error: --catalog ") and "nope.json: cannot read" in lines[-1]
