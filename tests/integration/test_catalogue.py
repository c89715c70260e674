"""The item catalogue on the real embedded broker: item records through the stream worker (KIND_ITEM
examples, dead letters), and serving's live catalogue (category filter, a hidden item never served
again, a late replica reading the compacted topic from the start)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import threading
import warnings
from typing import Any

import numpy as np
import pytest
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from support import poll

from serving.app import create_app
from serving.bench import SyntheticModel
from serving.settings import ServingSettings
from streamproc.examples import KIND_ITEM, ExampleBatch
from streamproc.kafka import client_config, read_all
from streamproc.publisher import ItemPublisher
from streamproc.topics import Topics
from streamproc.worker import StreamWorker

pytestmark = pytest.mark.integration

KEY = "k3y"


def fake_encode(texts: list[str]) -> np.ndarray:
    out = np.zeros((len(texts), 384), np.float32)
    for i, t in enumerate(texts):
        out[i, len(t) % 384] = 1.0
    return out


def _item_rows(s: ServingSettings) -> list[tuple[str, str, int, float, float, int]]:
    rows = []
    for msg in read_all(s, Topics.from_settings(s).examples, idle_ms=300):
        b = ExampleBatch.decode(msg.value)
        for n in range(len(b)):
            r = b.records[n]
            if r["kind"] == KIND_ITEM:
                rows.append((b.item_ids[n], b.user_ids[n], int(r["emb_row"]), float(r["weight"]), float(r["target"]),
                             int(b.embeddings.shape[1]) if b.embeddings.size else 0))
    return rows


def test_item_records_become_item_examples_and_bad_ones_dead_letters(settings: ServingSettings) -> None:
    topics = Topics.from_settings(settings)
    registry = CollectorRegistry()
    worker = StreamWorker(settings, registry=registry, encode_fn=fake_encode)
    stop = threading.Event()
    errors: list[BaseException] = []
    thread = threading.Thread(target=lambda: _run(worker, stop, errors), daemon=True)
    thread.start()
    try:
        with ItemPublisher(settings) as pub:
            pub.item(item_id="m1", title="Heat (1995)", categories=["Action", "Crime"], description="A heist in Los Angeles.")
            pub.item(item_id="m2", title="Toy Story (1995)", categories=["Animation"])
            pub.item(item_id="m3", title="Gone", categories=["Drama"], available=False)
            pub.remove("m4")  # a tombstone: no example, no dead letter
        raw = KafkaProducer(**client_config(settings))
        raw.send(topics.items, key=b"bad1", value=b'{"item_id":"bad1","title":"x","updated_at":1700000000,"price":3}')
        raw.send(topics.items, key=b"bad2", value=b"not json")
        raw.flush()
        raw.close()
        rows = poll(lambda: (r if len(r := _item_rows(settings)) >= 3 else None), 60, "3 item examples", 0.3)
        dead = poll(lambda: (d if len(d := read_all(settings, topics.dead_letters, idle_ms=300)) >= 2 else None), 30, "2 dead letters", 0.3)
    finally:
        stop.set()
        thread.join(60)
    assert not errors, errors
    by_id = {r[0]: r for r in rows}
    assert sorted(by_id) == ["m1", "m2", "m3"]
    assert all(r[1] == "" and r[2] >= 0 and math.isnan(r[4]) and r[5] == 384 for r in rows)  # content vector, no user, no target
    assert (by_id["m1"][3], by_id["m2"][3], by_id["m3"][3]) == (1.0, 1.0, 0.0)  # unavailable: weight 0
    reasons = {m.key: dict(m.headers) for m in dead}
    assert reasons[b"bad1"]["reason"] == b"extra_field" and reasons[b"bad1"]["field"] == b"price"
    assert reasons[b"bad2"]["reason"] == b"invalid_json"
    assert all(h["source_topic"] == topics.items.encode() for h in reasons.values())
    assert registry.get_sample_value("reco_streamproc_items_consumed_total", {"status": "invalid"}) == 2
    assert registry.get_sample_value("reco_streamproc_items_consumed_total", {"status": "tombstone"}) == 1
    assert registry.get_sample_value("reco_streamproc_examples_produced_total", {"kind": "item"}) == 3


def _run(worker: StreamWorker, stop: threading.Event, errors: list[BaseException]) -> None:
    try:
        worker.run(stop)
    except BaseException as exc:  # noqa: BLE001
        errors.append(exc)


def _recs(client: TestClient, user: str, **params: Any) -> list[str]:
    r = client.get(f"/v1/users/{user}/recommendations", params=params)
    assert r.status_code == 200, r.text
    return [i["item_id"] for i in r.json()["items"]]


def test_serving_catalogue_filters_by_category_and_never_serves_a_hidden_item(settings: ServingSettings) -> None:
    s = dataclasses.replace(settings, api_key=KEY)
    topics = Topics.from_settings(s)
    sm = SyntheticModel(20, 60, 4, seed=3)
    producer = KafkaProducer(max_request_size=4 * s.max_message_bytes, **client_config(s))
    for u in sm.snapshot(max_bytes=s.max_message_bytes):
        producer.send(topics.model_updates, u.encode())
    producer.flush()
    producer.close()
    with ItemPublisher(s) as pub:
        for n in range(60):
            pub.item(item_id=f"i{n}", title=f"Item {n}", categories=["small"] if n % 6 == 0 else ["big"])
    with TestClient(create_app(s, registry=CollectorRegistry())) as client:
        poll(lambda: client.get("/readyz").status_code == 200, 60, "ready with the catalogue", 0.1)
        small = _recs(client, "u1", k=20, category="small", fields="categories", exclude_seen="false")
        assert sorted(small, key=lambda i: int(i[1:])) == [f"i{n}" for n in range(0, 60, 6)]  # all 10 eligible, nothing else
        top = _recs(client, "u1", k=1, exclude_seen="false")[0]
        hide = client.post("/v1/items", headers={"X-API-Key": KEY},
                           json=[{"item_id": top, "title": f"Item {top}", "categories": ["big"], "available": False}])
        assert hide.status_code == 202, hide.text
        poll(lambda: top not in _recs(client, "u1", k=5, exclude_seen="false"), 30, "the hidden item gone", 0.1)
        for u in [f"u{n}" for n in range(20)] + ["stranger"]:  # never served again, to anyone, whatever the rules
            assert top not in _recs(client, u, k=60, exclude_seen="false")
            assert len(_recs(client, u, k=50, exclude_seen="false", category="big")) == 49  # 50 "big" minus the hidden one
        metrics = client.get("/metrics").text
    assert "reco_serving_catalog_items 60.0" in metrics and "reco_serving_catalog_unavailable_items 1.0" in metrics
    # A replica started later reads the compacted topic from the start: it never serves the hidden item either.
    with TestClient(create_app(s, registry=CollectorRegistry())) as late:
        poll(lambda: late.get("/readyz").status_code == 200, 60, "late replica ready", 0.1)
        assert top not in _recs(late, "u1", k=60, exclude_seen="false")
        # the request topic applies the same rules
        req = {"request_id": "r-cat", "user_id": "u2", "k": 5, "category": "small", "exclude_seen": False}
        p = KafkaProducer(**client_config(s))
        p.send(topics.requests, key=b"u2", value=json.dumps(req).encode())
        p.flush()
        p.close()

        def reply() -> Any:
            for m in read_all(s, topics.recommendations, idle_ms=300):
                body = json.loads(m.value)
                if body.get("request_id") == "r-cat":
                    return body
            return None

        body = poll(reply, 30, "the Kafka reply", 0.2)
    assert len(body["items"]) == 5 and all(int(i["item_id"][1:]) % 6 == 0 for i in body["items"])


def _reco(s: ServingSettings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RECO_KAFKA_BOOTSTRAP": s.kafka_bootstrap, "RECO_TOPIC_PREFIX": s.topic_prefix}
    return subprocess.run([sys.executable, "-m", "streamproc.cli", *args], env=env, capture_output=True, text=True, timeout=120)


def test_cli_publish_item(settings: ServingSettings) -> None:
    ok = _reco(settings, "publish", "item", "--item", "m1", "--title", "Heat (1995)", "--category", "Action,Crime",
               "--description", "A heist.", "--unavailable")
    assert ok.returncode == 0, ok.stderr
    bad = _reco(settings, "publish", "item", "--item", "m2")
    assert bad.returncode == 2 and "title" in bad.stderr
    bad = _reco(settings, "publish", "item", "--item", "m3", "--title", "x", "--category", "a" * 101)
    assert bad.returncode == 2 and "categories.0" in bad.stderr
    gone = _reco(settings, "publish", "item", "--item", "m1", "--remove")
    assert gone.returncode == 0, gone.stderr
    msgs = read_all(settings, Topics.from_settings(settings).items, idle_ms=500)
    assert [(m.key, m.value is None) for m in msgs] == [(b"m1", False), (b"m1", True)]
    rec = json.loads(msgs[0].value)
    assert rec["categories"] == ["Action", "Crime"] and rec["available"] is False and rec["description"] == "A heist."


@pytest.mark.slow
def test_whole_loop_catalogue_rules_and_a_hidden_item() -> None:
    """``reco up``'s roles as processes: the catalogue flows through streamproc (item examples) and
    the trainer without a crash, serving filters by category and stops serving a hidden item."""
    import io
    import uuid

    import httpx

    from serving.ops.loop import running_loop
    from streamproc.broker import free_port
    from streamproc.publisher import EventPublisher

    ports = {"http": free_port(), "streamproc": free_port(), "trainer": free_port()}
    settings = ServingSettings(http_port=ports["http"], topic_prefix=f"cat{uuid.uuid4().hex[:6]}.", api_key=KEY, snapshot_interval_s=5.0,
                        dashboard_sources=f"http://127.0.0.1:{ports['streamproc']}/metrics,http://127.0.0.1:{ports['trainer']}/metrics")
    role_env = {"streamproc": {"RECO_METRICS_PORT": str(ports["streamproc"])}, "trainer": {"RECO_METRICS_PORT": str(ports["trainer"])}}
    base = f"http://127.0.0.1:{ports['http']}"
    log = io.StringIO()
    rng = np.random.default_rng(5)

    def recs(user: str, **params: Any) -> list[str]:
        r = httpx.get(f"{base}/v1/users/{user}/recommendations", params=params, timeout=5)
        assert r.status_code == 200, r.text
        return [i["item_id"] for i in r.json()["items"]]

    with running_loop(settings, log=log, role_env=role_env) as (s, sup):
        poll(lambda: _http_ok(f"{base}/healthz"), 120, "serving /healthz", 0.3)
        with ItemPublisher(s) as items:
            for n in range(40):
                items.item(item_id=f"i{n}", title=f"Film {n}", categories=["drama"] if n < 12 else ["comedy"],
                           description=f"A {'sad family drama' if n < 12 else 'silly comedy of errors'} number {n}.")
        with EventPublisher(s) as pub:
            for _ in range(1500):
                pub.rating(user_id=f"u{rng.integers(30)}", item_id=f"i{rng.integers(40)}", rating=float(rng.choice([1, 2, 3, 4, 5])))
        try:
            poll(lambda: _http_ok(f"{base}/readyz"), 120, "serving /readyz", 0.3)
            drama = poll(lambda: (r if len(r := recs("u1", k=5, category="drama", exclude_seen="false")) == 5 else None), 60,
                         "5 drama answers", 0.3)
            assert all(int(i[1:]) < 12 for i in drama)
            top = recs("u1", k=1, exclude_seen="false")[0]
            hide = httpx.post(f"{base}/v1/items", headers={"X-API-Key": KEY},
                              json=[{"item_id": top, "title": "gone", "available": False}], timeout=10)
            assert hide.status_code == 202, hide.text
            poll(lambda: top not in recs("u1", k=40, exclude_seen="false"), 30, "the hidden item gone", 0.2)
            # the version before the feedback: a snapshot no longer takes a new version by itself (it
            # holds what the deltas delivered), only the delta carrying this feedback does
            version = httpx.get(f"{base}/readyz", timeout=5).json()["version"]
            with EventPublisher(s) as pub:  # more feedback on it, new model versions: still never served
                for u in range(30):
                    pub.rating(user_id=f"u{u}", item_id=top, rating=5.0)
            poll(lambda: httpx.get(f"{base}/readyz", timeout=5).json()["version"] > version, 60, "a newer model", 0.3)
            for u in range(30):
                assert top not in recs(f"u{u}", k=40, exclude_seen="false")
        except BaseException:
            print(log.getvalue()[-5000:])
            raise
        codes = sup.stop()
    assert all(c == 0 for c in codes.values()), (codes, log.getvalue()[-3000:])
    assert "Traceback" not in log.getvalue(), log.getvalue()[-3000:]


def _http_ok(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
