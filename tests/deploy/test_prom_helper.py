"""The real-Prometheus helper (tests/deploy/prom.py) against a real scrape target."""

from __future__ import annotations

import time

import prom
import pytest
import yaml
from metrics_catalog import DEPLOY
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


@pytest.fixture
def target():
    """A tiny prometheus_client HTTP server on a free loopback port, with one counter and gauge."""
    registry = CollectorRegistry()
    counter = Counter("reco_test_events_total", "events", ["type"], registry=registry)
    gauge = Gauge("reco_test_model_version", "version", registry=registry)
    counter.labels(type="rating").inc(7)
    gauge.set(42)
    port = prom.free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield f"127.0.0.1:{port}", counter, gauge
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_real_prometheus_scrapes_and_answers_queries(prometheus, target) -> None:
    address, counter, gauge = target
    url = prometheus(prom.scrape_config("reco-test", [address], interval="1s"))

    up = prom.values(prom.wait_for(url, 'up{job="reco-test"} == 1', timeout=30))
    assert up == {(("__name__", "up"), ("instance", address), ("job", "reco-test")): 1.0}

    got = prom.wait_for(url, 'reco_test_events_total{type="rating"}', timeout=30)
    assert prom.values(got) == {(("__name__", "reco_test_events_total"), ("instance", address), ("job", "reco-test"), ("type", "rating")): 7.0}

    # A change in the process shows up in Prometheus on a later scrape.
    gauge.set(43)
    prom.wait_for(url, "reco_test_model_version == 43", timeout=30)


def test_query_reports_promql_errors(prometheus, target) -> None:
    address, _, _ = target
    url = prometheus(prom.scrape_config("reco-test", [address]))
    with pytest.raises(RuntimeError, match="bad_data"):
        prom.query(url, "sum(")


def test_start_prometheus_fails_loudly_on_a_bad_config(prometheus_bin, tmp_path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("scrape_configs: [{job_name: 1, static_configs: nope}]\n")
    with pytest.raises(RuntimeError, match="did not become ready"):
        prom.start_prometheus(bad, prom.free_port(), tmp_path / "data", timeout=10)


def test_real_prometheus_loads_and_evaluates_the_alert_rules(prometheus, target) -> None:
    address, _, _ = target
    config = prom.scrape_config("reco-test", [address])
    config["rule_files"] = [str(DEPLOY / "prometheus" / "rules.yml")]
    url = prometheus(config)
    expected = {r["alert"] for g in yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())["groups"] for r in g["rules"]}
    loaded = prom.rules(url)
    assert set(loaded) == expected
    # No trainer target exists here, so RecoTrainerDown (absent(up{job="reco-trainer"})) goes pending
    # on the first evaluation; every other rule evaluates cleanly.
    # Rule groups are evaluated independently: until a group's first evaluation its rules read
    # health "unknown", so wait for every rule to have been evaluated once.
    deadline = time.monotonic() + 30
    while True:
        active = [a for a in prom.alerts(url) if a["labels"]["alertname"] == "RecoTrainerDown"]
        loaded = prom.rules(url)
        if (active and all(r["health"] != "unknown" for r in loaded.values())) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert all(r["health"] == "ok" for r in loaded.values()), {n: r.get("lastError") for n, r in loaded.items()}
    (down,) = active
    assert down["state"] == "pending" and down["labels"]["job"] == "reco-trainer"
