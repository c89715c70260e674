"""``/dashboard``: scraping, rates and quantiles on hand-made expositions; the routes via TestClient."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette

with warnings.catch_warnings():  # starlette nags about httpx vs httpx2 in its test client; not ours
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from serving.dashboard import WANTED, Dashboard, histogram_quantile, parse_metrics, routes
from serving.settings import ServingSettings
from streamproc.broker import free_port

SP = "http://127.0.0.1:9101/metrics"


def events_text(**counts: float) -> str:
    lines = ["# HELP reco_streamproc_events_consumed_total Events consumed.",
             "# TYPE reco_streamproc_events_consumed_total counter"]
    lines += [f'reco_streamproc_events_consumed_total{{type="{t}"}} {v}' for t, v in counts.items()]
    return "\n".join(lines) + "\n"


def test_parse_metrics_keys_samples_by_name_and_labels() -> None:
    reg = CollectorRegistry()
    c = Counter("reco_streamproc_dead_letters_total", "x", registry=reg)
    g = Gauge("reco_trainer_prequential_rmse", "x", ["window"], registry=reg)
    h = Histogram("reco_serving_feedback_latency_seconds", "x", buckets=(0.1, 1.0), registry=reg)
    c.inc(3)
    g.labels("recent").set(0.93)
    h.observe(0.5)
    samples = parse_metrics(generate_latest(reg).decode())
    assert samples[("reco_streamproc_dead_letters_total", ())] == 3.0
    assert samples[("reco_trainer_prequential_rmse", (("window", "recent"),))] == 0.93
    assert samples[("reco_serving_feedback_latency_seconds_bucket", (("le", "1.0"),))] == 1.0
    assert samples[("reco_serving_feedback_latency_seconds_bucket", (("le", "+Inf"),))] == 1.0
    assert not any(name.endswith("_created") for name, _ in samples)


def test_only_the_families_the_page_uses_are_parsed() -> None:
    reg = CollectorRegistry()
    Histogram("reco_serving_request_duration_seconds", "x", ["route"], buckets=(0.1,), registry=reg).labels("/r").observe(1)
    Gauge("reco_streamproc_consumer_lag_messages", "x", ["topic", "partition"], registry=reg).labels("t", "0").set(5)
    Counter("reco_serving_requests_total", "x", ["route", "status"], registry=reg).labels("/r", "200").inc()
    names = {name for name, _ in parse_metrics(generate_latest(reg).decode(), WANTED)}
    assert names == {"reco_serving_request_duration_seconds_bucket", "reco_serving_request_duration_seconds_count",
                     "reco_serving_request_duration_seconds_sum", "reco_serving_requests_total"}


def test_two_scrapes_of_a_counter_give_exact_rates_by_type() -> None:
    d = Dashboard([SP], registry=False)
    first = d.record({SP: events_text(click=10, rating=4)}, now=100.0)
    assert first["events_per_s"] is None  # one scrape: no rate yet
    p = d.record({SP: events_text(click=60, rating=9, comment=5)}, now=105.0)
    assert p["events_per_s"] == pytest.approx((50 + 5 + 5) / 5)
    assert p["events_per_s_click"] == pytest.approx(10.0)
    assert p["events_per_s_rating"] == pytest.approx(1.0)
    assert p["events_per_s_comment"] == pytest.approx(1.0)  # new series on an up source counts from 0
    assert p["events_per_s_invalid"] == 0.0  # declared family, no series yet: 0
    assert p["learned_per_s"] is None  # no trainer exposition at all: unknown, not 0


def test_counter_reset_counts_the_new_value() -> None:
    d = Dashboard([SP], registry=False)
    d.record({SP: events_text(click=1000)}, now=0.0)
    p = d.record({SP: events_text(click=20)}, now=2.0)  # streamproc restarted
    assert p["events_per_s_click"] == pytest.approx(10.0)


def test_rates_use_the_newest_scrape_at_least_a_window_older() -> None:
    d = Dashboard([SP], registry=False, window_s=5.0)
    for t, clicks in enumerate([0, 1, 2, 3, 4, 100, 106]):
        p = d.record({SP: events_text(click=clicks)}, now=float(t))
    # t=6 compares with t=1 (the newest at least 5 s older): (106 - 1) / 5
    assert p["events_per_s_click"] == pytest.approx(21.0)
    # while the ring is shorter than the window, the oldest scrape is the start
    d2 = Dashboard([SP], registry=False, window_s=5.0)
    d2.record({SP: events_text(click=0)}, now=0.0)
    d2.record({SP: events_text(click=4)}, now=1.0)
    assert d2.record({SP: events_text(click=6)}, now=2.0)["events_per_s_click"] == pytest.approx(3.0)


def test_histogram_quantiles_over_the_window_interpolate_within_buckets() -> None:
    reg = CollectorRegistry()
    h = Histogram("reco_serving_feedback_latency_seconds", "x", buckets=(0.01, 0.1, 1.0, 10.0, 600.0), registry=reg)
    d = Dashboard([], registry=reg)
    h.observe(0.05)
    h.observe(0.05)
    d.record({"serving": generate_latest(reg).decode()}, now=0.0)
    for _ in range(4):
        h.observe(0.5)
        h.observe(5.0)
    p = d.record({"serving": generate_latest(reg).decode()}, now=5.0)
    # window increase per bucket: <=0.1: 0, <=1: 4, <=10: 8, +Inf: 8
    assert p["feedback_latency_p50_s"] == pytest.approx(1.0)  # rank 4 ends bucket (0.1, 1]
    assert p["feedback_latency_p99_s"] == pytest.approx(1.0 + 9.0 * (7.92 - 4) / 4)
    # no observation in the next window: unknown, not 0
    later = d.record({"serving": generate_latest(reg).decode()}, now=11.0)
    assert later["feedback_latency_p50_s"] is None


def test_histogram_quantile_edges() -> None:
    assert histogram_quantile(0.99, [(1.0, 1), (2.0, 1), (math.inf, 10)]) == 2.0  # rank in +Inf
    assert histogram_quantile(0.5, [(1.0, 0), (math.inf, 0)]) is None
    assert histogram_quantile(0.0, [(1.0, 4), (math.inf, 4)]) == 0.0
    with pytest.raises(ValueError, match="q must be"):
        histogram_quantile(1.5, [(1.0, 1), (math.inf, 1)])


def test_serving_requests_leave_out_dashboard_metrics_and_probe_routes() -> None:
    reg = CollectorRegistry()
    req = Counter("reco_serving_requests_total", "x", ["route", "status"], registry=reg)
    dur = Histogram("reco_serving_request_duration_seconds", "x", ["route"], buckets=(0.001, 0.01, 0.1), registry=reg)
    d = Dashboard([], registry=reg)
    d.record({"serving": generate_latest(reg).decode()}, now=0.0)
    req.labels("recommendations", "200").inc(12)
    req.labels("events", "202").inc(8)
    for probe in ("dashboard", "metrics", "healthz", "readyz", "/dashboard/data"):  # names as serving.app labels them
        req.labels(probe, "200").inc(1000)
        dur.labels(probe).observe(0.09)
    for _ in range(10):
        dur.labels("recommendations").observe(0.005)
    p = d.record({"serving": generate_latest(reg).decode()}, now=4.0)
    assert p["requests_per_s"] == pytest.approx(5.0)
    assert p["request_p50_s"] == pytest.approx(0.0055)  # (0.001, 0.01], rank 5 of 10
    assert p["request_p99_s"] == pytest.approx(0.001 + 0.009 * 9.9 / 10)


def test_gauges_versions_quality_drift_and_down_sources() -> None:
    tr = "http://127.0.0.1:9102/metrics"
    text = "\n".join([
        "# TYPE reco_trainer_model_version gauge", "reco_trainer_model_version 41",
        "# TYPE reco_trainer_prequential_rmse gauge",
        'reco_trainer_prequential_rmse{window="running"} 0.95', 'reco_trainer_prequential_rmse{window="recent"} NaN',
        "# TYPE reco_trainer_drift_detections_total counter",
        'reco_trainer_drift_detections_total{signal="error"} 2', 'reco_trainer_drift_detections_total{signal="rating"} 1',
    ]) + "\n"
    d = Dashboard([SP, tr], registry=False)
    p = d.record({SP: None, tr: text}, now=1.0)
    assert (p["model_version"], p["trainer_model_version"], p["serving_model_version"]) == (41.0, 41.0, None)
    assert p["rmse_running"] == 0.95 and p["rmse_recent"] is None  # NaN is "no data", valid JSON
    assert (p["drift_total"], p["drift_error_total"], p["drift_sentiment_total"]) == (3.0, 2.0, 0.0)
    assert p["dead_letters_total"] is None  # streamproc is down: unknown
    assert (p["sources_up"], p["sources_total"]) == (1.0, 2.0)
    assert p["events_per_s"] is None
    # streamproc comes up: its first scrape cannot make a rate (it was down before)
    p2 = d.record({SP: events_text(click=500), tr: text}, now=2.0)
    assert p2["events_per_s"] is None
    srcs = {s["name"]: s for s in d.data()["sources"]}
    assert srcs["streamproc"]["up"] and srcs["trainer"]["up"]
    # a garbled exposition is a source that is down, with the reason
    d.record({SP: "reco_streamproc_dead_letters_total{ not metrics", tr: text}, now=3.0)
    srcs = {s["name"]: s for s in d.data()["sources"]}
    assert not srcs["streamproc"]["up"] and "unparsable" in srcs["streamproc"]["error"]


def test_data_since_returns_only_newer_points() -> None:
    d = Dashboard([SP], registry=False)
    for t in (1.0, 2.0, 3.0):
        d.record({SP: events_text(click=t)}, now=t)
    assert [p["t"] for p in d.data()["history"]] == [1.0, 2.0, 3.0]
    assert [p["t"] for p in d.data(since=2.0)["history"]] == [3.0]
    assert d.data(since=2.0)["latest"]["t"] == 3.0


def test_constructor_checks_arguments() -> None:
    with pytest.raises(ValueError, match="window_s"):
        Dashboard([], window_s=0)
    with pytest.raises(ValueError, match="keep"):
        Dashboard([], keep=1)


@pytest.fixture
def client() -> TestClient:
    down = f"http://127.0.0.1:{free_port()}/metrics"  # nothing listens there
    reg = CollectorRegistry()
    Gauge("reco_serving_model_version", "x", registry=reg).set(7)
    app = Starlette(routes=routes(ServingSettings(dashboard_sources=down), reg))
    return TestClient(app)


def test_page_and_assets_are_served_self_contained(client: TestClient) -> None:
    page = client.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for marker in ('id="val-events_per_s"', 'id="status"', 'id="sources"', 'id="chart-feedback"', "dashboard.js"):
        assert marker in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN
    js = client.get("/dashboard/static/dashboard.js")
    assert js.status_code == 200 and "dashboard/data" in js.text
    assert client.get("/dashboard/static/dashboard.css").status_code == 200


def test_data_endpoint_reports_down_sources_and_own_registry(client: TestClient) -> None:
    resp = client.get("/dashboard/data")
    assert resp.status_code == 200
    doc = resp.json()
    assert set(doc) >= {"time", "interval_s", "window_s", "scrapes", "sources", "latest", "summary", "history"}
    by_name = {s["name"]: s for s in doc["sources"]}
    assert by_name["serving"]["up"] is True
    (down,) = [s for s in doc["sources"] if s["name"] != "serving"]
    assert down["up"] is False and down["error"]
    assert doc["latest"]["serving_model_version"] == 7.0
    assert doc["latest"]["events_per_s"] is None
    assert doc["summary"]["model_version"] == 7.0 and doc["summary"]["events_per_s"] is None
    assert client.get("/dashboard/data?since=abc").status_code == 400


def test_every_metric_the_page_reads_is_in_the_catalog() -> None:
    catalog = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
    if not catalog.exists():
        pytest.skip("docs/metrics.md (the metrics catalog) is not there")
    names = set(re.findall(r"`(reco_[a-z0-9_]+)`", catalog.read_text()))
    families = {n.removesuffix("_total") for n in names} | names
    assert sorted(WANTED - families) == []


def test_a_declared_counter_that_never_counted_reads_zero() -> None:
    reg = CollectorRegistry()
    drift = Counter("reco_trainer_drift_detections_total", "x", ["signal"], registry=reg)
    d = Dashboard([], registry=reg)
    d.record({"serving": generate_latest(reg).decode()}, now=0.0)
    p = d.record({"serving": generate_latest(reg).decode()}, now=1.0)
    assert (p["drift_total"], p["drift_error_total"]) == (0.0, 0.0)
    drift.labels("error").inc()
    p = d.record({"serving": generate_latest(reg).decode()}, now=2.0)
    assert (p["drift_total"], p["drift_error_total"], p["drift_rating_total"]) == (1.0, 1.0, 0.0)
