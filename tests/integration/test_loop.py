"""The closed loop as users meet it: ``reco up``'s supervisor running the real roles as processes
on the embedded broker; feedback changes a user's recommendations over HTTP and on the topic; a
real Prometheus scrapes every role; two streamproc workers and two serving replicas scale out."""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import poll

from serving.ops.loop import running_loop
from serving.settings import ServingSettings
from streamproc.broker import free_port
from streamproc.examples import ExampleBatch
from streamproc.kafka import client_config, read_all
from streamproc.publisher import EventPublisher
from streamproc.topics import Topics

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_spec = importlib.util.spec_from_file_location("prom", Path(__file__).resolve().parents[1] / "deploy" / "prom.py")
prom = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prom)  # type: ignore[union-attr]


def _settings(**kw: Any) -> tuple[ServingSettings, dict[str, int]]:
    ports = {"http": free_port(), "streamproc": free_port(), "trainer": free_port()}
    s = ServingSettings(
        http_port=ports["http"],
        topic_prefix=f"loop{uuid.uuid4().hex[:6]}.",
        dashboard_sources=f"http://127.0.0.1:{ports['streamproc']}/metrics,http://127.0.0.1:{ports['trainer']}/metrics",
        snapshot_interval_s=5.0,
        **kw,
    )
    return s, ports


def _rating(user: str, item: str, rating: float) -> dict[str, Any]:
    return {"type": "rating", "user_id": user, "item_id": item, "rating": rating}


def _seed_events(n_users: int = 40, n_items: int = 60) -> list[dict[str, Any]]:
    import random

    rng = random.Random(7)
    return [_rating(f"u{rng.randrange(n_users)}", f"i{rng.randrange(n_items)}", rng.choice([1.0, 2.0, 3.0, 4.0, 5.0]))
            for _ in range(1500)]


@pytest.fixture(scope="module")
def loop() -> Iterator[tuple[ServingSettings, dict[str, int], io.StringIO]]:
    settings, ports = _settings()
    log = io.StringIO()
    role_env = {"streamproc": {"RECO_METRICS_PORT": str(ports["streamproc"])}, "trainer": {"RECO_METRICS_PORT": str(ports["trainer"])}}
    with running_loop(settings, log=log, role_env=role_env) as (s, sup):
        base = f"http://127.0.0.1:{ports['http']}"
        poll(lambda: _ok(f"{base}/healthz"), 120, "serving /healthz", 0.3)
        with EventPublisher(s) as pub:
            for ev in _seed_events():
                pub.publish(ev)
        try:
            poll(lambda: _ok(f"{base}/readyz"), 120, "serving /readyz (a model loaded)", 0.3)
        except AssertionError:
            print(log.getvalue()[-5000:])
            raise
        yield s, ports, log
        codes = sup.stop()
    assert all(c == 0 for c in codes.values()), (codes, log.getvalue()[-3000:])


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_feedback_changes_recommendations_over_http_and_topic(loop: tuple[ServingSettings, dict[str, int], io.StringIO]) -> None:
    s, ports, log = loop
    base = f"http://127.0.0.1:{ports['http']}"
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(Topics.from_settings(s).recommendations, auto_offset_reset="latest", **client_config(s))
    consumer.poll(200)
    user = f"new-{uuid.uuid4().hex[:6]}"
    before = httpx.get(f"{base}/v1/users/{user}/recommendations", params={"k": 5}).json()
    assert before["fallback"] is True
    liked = before["items"][0]["item_id"]
    with EventPublisher(s) as pub:
        pub.rating(user_id=user, item_id=liked, rating=5.0)
        pub.comment(user_id=user, item_id="i1", text="an absolute delight, loved every minute")

    def personalised() -> dict | None:
        body = httpx.get(f"{base}/v1/users/{user}/recommendations", params={"k": 5}).json()
        return body if not body["fallback"] else None

    after = poll(personalised, 30, "the user's own recommendations")
    assert after["version"] > before["version"]
    assert liked not in [i["item_id"] for i in after["items"]]  # exclude_seen: the rated item is gone

    def pushed() -> dict | None:
        for msgs in consumer.poll(200).values():
            for m in msgs:
                if m.key == user.encode():
                    return json.loads(m.value)
        return None

    push = poll(pushed, 30, "a push of the user's refreshed top-k on the recommendations topic", 0)
    consumer.close()
    assert push["user_id"] == user and push["items"]


def test_dashboard_data_sees_every_role(loop: tuple[ServingSettings, dict[str, int], io.StringIO]) -> None:
    s, ports, _ = loop
    data = httpx.get(f"http://127.0.0.1:{ports['http']}/dashboard/data", timeout=5).json()
    assert all(src["up"] for src in data["sources"]), data["sources"]


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian prometheus not installed (deploy/system-deps.sh)")
def test_real_prometheus_scrapes_all_roles(loop: tuple[ServingSettings, dict[str, int], io.StringIO], tmp_path: Path) -> None:
    s, ports, _ = loop
    targets = [f"127.0.0.1:{ports[r]}" for r in ("http", "streamproc", "trainer")]
    port = prom.free_port()
    config = prom.write_config(prom.scrape_config("reco", targets, interval="1s"), tmp_path / "prometheus.yml")
    proc = prom.start_prometheus(config, port, tmp_path / "tsdb")
    url = f"http://127.0.0.1:{port}"
    try:
        up = prom.wait_for(url, "sum(up) == 3", timeout=60)
        assert up
        with EventPublisher(s) as pub:  # fresh feedback while Prometheus watches
            for n in range(50):
                pub.rating(user_id=f"u{n % 7}", item_id=f"i{n % 11}", rating=4.0)
        q = prom.wait_for(url, "histogram_quantile(0.99, sum by (le) (rate(reco_serving_feedback_latency_seconds_bucket[30s]))) > 0", timeout=60)
        p99 = float(q[0]["value"][1])
        assert 0 < p99 < 600
        for expr in ["reco_trainer_drift_detections_total", "reco_streamproc_events_consumed_total",
                     "reco_trainer_prequential_rmse", "reco_serving_model_version"]:
            assert prom.wait_for(url, expr, timeout=30), expr
        jobs = {r["metric"]["instance"] for r in prom.query(url, "up == 1")}
        assert jobs == set(targets)
    finally:
        prom.stop(proc)


def test_two_streamproc_workers_and_two_replicas() -> None:
    settings, ports = _settings()
    p2, h2 = free_port(), free_port()
    roles = {"streamproc-1": ["streamproc"], "streamproc-2": ["streamproc"], "trainer": ["trainer"], "serve-1": ["serve"], "serve-2": ["serve"]}
    role_env = {"streamproc-1": {"RECO_METRICS_PORT": str(ports["streamproc"])}, "streamproc-2": {"RECO_METRICS_PORT": str(p2)},
                "trainer": {"RECO_METRICS_PORT": str(ports["trainer"])}, "serve-2": {"RECO_HTTP_PORT": str(h2)}}
    log = io.StringIO()
    with running_loop(settings, log=log, roles=roles, role_env=role_env) as (s, sup):
        bases = [f"http://127.0.0.1:{ports['http']}", f"http://127.0.0.1:{h2}"]
        for b in bases:
            poll(lambda b=b: _ok(f"{b}/healthz"), 120, f"{b}/healthz", 0.3)

        poll(lambda: _split(log.getvalue(), s.partitions), 90, "the two workers to split the partitions", 0.5)
        events = _seed_events()
        with EventPublisher(s) as pub:
            ids = [pub.publish(ev) for ev in events]

        def examples() -> list[str] | None:
            got = [e for m in read_all(s, Topics.from_settings(s).examples, idle_ms=500) for e in ExampleBatch.decode(m.value).event_ids]
            return got if len(got) >= len(ids) else None

        got = poll(examples, 60, "every event as an example", 1.0)
        assert sorted(got) == sorted(ids)  # each event turned into an example exactly once

        def converged() -> tuple | None:
            bodies = [httpx.get(f"{b}/v1/users/u3/recommendations", params={"k": 10}).json() for b in bases]
            versions = [httpx.get(f"{b}/readyz").json().get("version") for b in bases]
            if bodies[0] == bodies[1] and versions[0] == versions[1] and not bodies[0].get("fallback", True):
                return bodies[0], versions[0]
            return None

        body, version = poll(converged, 60, "both replicas on the same version with identical answers", 0.5)
        assert version >= 1 and body["items"]


def _split(log: str, partitions: int) -> bool:
    """Each worker's latest assignment (from its log) is non-empty, disjoint, and covers all partitions."""
    latest: dict[str, set[int]] = {}
    for line in log.splitlines():
        if "partitions assigned:" in line and line.startswith("streamproc-"):
            latest[line.split()[0]] = set(json.loads(line.split("partitions assigned:")[1]))
    owned = list(latest.values())
    return len(owned) == 2 and all(owned) and not (owned[0] & owned[1]) and len(owned[0] | owned[1]) == partitions


def test_dashboard_in_chromium_shows_the_live_loop(loop: tuple[ServingSettings, dict[str, int], io.StringIO], browser: Any) -> None:
    """The built-in page against the real running roles: live numbers from every role."""
    import threading

    s, ports, _ = loop
    driver = browser
    driver.get(f"http://127.0.0.1:{ports['http']}/dashboard")

    def value(key: str) -> float | None:
        raw = driver.find_element("id", f"val-{key}").get_attribute("data-value")
        return float(raw) if raw else None

    stop = threading.Event()

    def feedback() -> None:  # real events through the real loop while the page is open
        with EventPublisher(s) as pub:
            n = 0
            while not stop.is_set():
                pub.rating(user_id=f"u{n % 31}", item_id=f"i{n % 53}", rating=float(1 + n % 5))
                n += 1
                if n % 20 == 0:
                    pub.flush()
                    stop.wait(0.05)

    feeder = threading.Thread(target=feedback, daemon=True)
    feeder.start()
    try:
        poll(lambda: (value("events_per_s") or 0) > 0, 60, "events/s from streamproc on the page", 0.2)
        poll(lambda: value("rmse_recent") is not None, 60, "prequential RMSE from the trainer on the page", 0.2)
        # ranking quality on a ratings-only stream: a sample of positive ratings ranked against the catalogue
        poll(lambda: value("hit_rate_recent") is not None and value("ndcg_recent") is not None, 60,
             "prequential HR@10 and NDCG@10 on the page", 0.2)
        first = poll(lambda: value("model_version"), 60, "the serving model version on the page", 0.2)
        poll(lambda: (value("model_version") or 0) > first, 60, "the model version to move on the page", 0.2)
        poll(lambda: value("feedback_latency_p50_s") is not None, 60, "feedback latency on the page", 0.2)
    finally:
        stop.set()
        feeder.join(timeout=10)
    sources = [li.get_attribute("data-up") for li in driver.find_elements("css selector", "#sources li")]
    assert sources == ["true"] * 3, sources
    from pathlib import Path as _P

    artifacts = _P(__file__).resolve().parents[2] / "artifacts"
    artifacts.mkdir(exist_ok=True)
    assert driver.save_screenshot(str(artifacts / "dashboard-loop.png"))
