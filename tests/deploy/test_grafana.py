"""The Grafana dashboard: every panel's PromQL uses only catalogued metrics; provisioning is wired."""

from __future__ import annotations

import json

import pytest
import yaml
from metrics_catalog import DEPLOY, base_metric, promql_metric_names

GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "reco.json"


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict) -> list[dict]:
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows nest their panels
    return out


def _exprs(dashboard: dict) -> list[tuple[str, str]]:
    """(where, expr) for every panel target and every Prometheus annotation query."""
    found = [(p["title"], t["expr"]) for p in _panels(dashboard) for t in p.get("targets", [])]
    found += [(f"annotation {a['name']}", a["expr"]) for a in dashboard["annotations"]["list"] if "expr" in a]
    return found


def test_every_panel_queries_only_catalogued_metrics(dashboard: dict, catalog) -> None:
    exprs = _exprs(dashboard)
    assert len(exprs) >= 20
    for where, expr in exprs:
        names = promql_metric_names(expr)
        assert names, f"{where}: no metric found in {expr!r}"
        for series in names:
            assert base_metric(series, catalog), f"panel {where!r} uses {series!r}, not in docs/metrics.md"


def test_every_catalogued_metric_is_on_the_dashboard(dashboard: dict, catalog) -> None:
    shown = {base_metric(s, catalog) for _, e in _exprs(dashboard) for s in promql_metric_names(e)}
    assert set(catalog) - shown == set()


def test_the_panels_an_operator_needs(dashboard: dict) -> None:
    by_title = {p["title"]: " ".join(t["expr"] for t in p.get("targets", [])) for p in _panels(dashboard)}

    def panel_with(*needles: str) -> str:
        hits = [t for t, e in by_title.items() if all(n in e for n in needles)]
        assert hits, f"no panel queries {needles}"
        return hits[0]

    panel_with("reco_streamproc_events_consumed_total", "by (type)")
    panel_with("reco_streamproc_dead_letters_total")
    panel_with("histogram_quantile(0.5", "reco_serving_feedback_latency_seconds_bucket")
    panel_with("histogram_quantile(0.99", "reco_serving_feedback_latency_seconds_bucket")
    panel_with("reco_trainer_model_version", "reco_serving_model_version")
    panel_with("rate(reco_trainer_updates_published_total")
    panel_with("reco_trainer_prequential_rmse")
    panel_with("reco_trainer_prequential_ndcg_at_10")
    panel_with("reco_trainer_drift_detections_total")
    panel_with("reco_serving_request_duration_seconds_bucket")
    panel_with('reco_serving_requests_total{status=~"5.."}')
    panel_with("reco_streamproc_consumer_lag_messages", "partition")
    panel_with("up{")


def test_panels_are_well_formed(dashboard: dict) -> None:
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    cells: set[tuple[int, int]] = set()
    for p in _panels(dashboard):
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "prometheus"}, p["title"]
            ref_ids = [t["refId"] for t in p["targets"]]
            assert len(ref_ids) == len(set(ref_ids)), p["title"]


def test_provisioning_points_at_the_dashboard_and_datasource(dashboard: dict) -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["uid"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    prov = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "reco.yml").read_text())
    (provider,) = prov["providers"]
    assert provider["type"] == "file"
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
