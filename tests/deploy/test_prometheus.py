"""Prometheus config and alert rules: promtool validates them, rule unit tests cover every alert."""

from __future__ import annotations

import subprocess

import pytest
import yaml
from metrics_catalog import DEPLOY, base_metric, promql_metric_names

PROM_DIR = DEPLOY / "prometheus"
CONFIG = PROM_DIR / "prometheus.yml"
RULES = PROM_DIR / "rules.yml"
RULE_TESTS = PROM_DIR / "rules.test.yml"

# What the operator asked for, alert name -> metric it must be built on.
REQUIRED_ALERTS = {
    "RecoFreshnessSLOBreach": "reco_serving_feedback_latency_seconds_bucket",
    "RecoDriftDetected": "reco_trainer_drift_detections_total",
    "RecoDeadLetterRateHigh": "reco_streamproc_dead_letters_total",
    "RecoConsumerLagGrowing": "reco_streamproc_consumer_lag_messages",
    "RecoUndecodableBatches": "reco_streamproc_undecodable_batches_total",
    "RecoNoModelUpdate": "reco_trainer_updates_published_total",
    "RecoServingErrorRate": "reco_serving_requests_total",
    "RecoTrainerDown": "up",
}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=PROM_DIR)


def _alerts() -> dict[str, dict]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}


def test_promtool_check_config(promtool: str) -> None:
    r = _run(promtool, "check", "config", str(CONFIG))
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_check_rules(promtool: str) -> None:
    r = _run(promtool, "check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{sum(len(g['rules']) for g in yaml.safe_load(RULES.read_text())['groups'])} rules found" in r.stdout


def test_promtool_rule_unit_tests(promtool: str) -> None:
    r = _run(promtool, "test", "rules", str(RULE_TESTS))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_required_alerts_exist_on_the_right_metrics() -> None:
    alerts = _alerts()
    for name, metric in REQUIRED_ALERTS.items():
        assert name in alerts, f"missing alert {name}"
        assert metric in promql_metric_names(alerts[name]["expr"]), f"{name} does not use {metric}"
    freshness = alerts["RecoFreshnessSLOBreach"]["expr"]
    assert "histogram_quantile(0.99" in freshness and "> 3" in freshness
    trainer_down = alerts["RecoTrainerDown"]["expr"]
    assert 'up{job="reco-trainer"} == 0' in trainer_down and 'absent(up{job="reco-trainer"})' in trainer_down


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    cases: dict[str, set[str]] = {}
    for group in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for t in group.get("alert_rule_test", []):
            cases.setdefault(t["alertname"], set()).add("fires" if t.get("exp_alerts") else "quiet")
    for name in _alerts():
        assert cases.get(name) == {"fires", "quiet"}, f"{name}: rule tests cover {sorted(cases.get(name, ()))}"


def test_every_alert_has_severity_and_summary() -> None:
    for name, rule in _alerts().items():
        assert rule["labels"]["severity"] in {"page", "warning", "info"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_rules_use_only_catalog_metrics(catalog) -> None:
    for name, rule in _alerts().items():
        for series in promql_metric_names(rule["expr"]):
            assert base_metric(series, catalog), f"alert {name} uses {series!r}, not in docs/metrics.md"


def test_scrape_config_covers_every_role() -> None:
    cfg = yaml.safe_load(CONFIG.read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    for job, port in {"reco-streamproc": 9101, "reco-trainer": 9102, "reco-serving": 8000}.items():
        assert job in jobs, job
        assert jobs[job].get("metrics_path", "/metrics") == "/metrics"
        targets = [t for sc in jobs[job]["static_configs"] for t in sc["targets"]]
        assert targets and all(t.endswith(f":{port}") for t in targets), (job, targets)
    assert cfg["rule_files"] == ["rules.yml"]
    assert "kubernetes_sd_configs" in CONFIG.read_text()  # the comment on Kubernetes discovery


@pytest.mark.parametrize(
    "expr, expected",
    [
        ('histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="1"}[5m]))) > 3', {"a_bucket"}),
        ("up{job=~\"a|b\"} == 0 or absent(up{job=\"t\"})", {"up"}),
        ("sum by (job, topic) (max by (job, topic, partition) (lag offset 10m)) > on() group_left() b", {"lag", "b"}),
        ("time() - ts > 300 and (active == 1)", {"ts", "active"}),
        ("rate(x_total[$__rate_interval]) * 1e3", {"x_total"}),
    ],
)
def test_promql_metric_name_parser(expr: str, expected: set[str]) -> None:
    assert promql_metric_names(expr) == expected
