"""Read the metrics catalog (``docs/metrics.md``) and pull metric names out of PromQL.

The catalog table has a fixed column layout (Metric | Type | Unit | Labels | Role | Meaning), so
tests can check that the alert rules and the dashboard only use metrics that exist.

Examples
--------
>>> sorted(promql_metric_names('sum by (le) (rate(reco_x_seconds_bucket{job="a"}[5m])) > on() up'))
['reco_x_seconds_bucket', 'up']
>>> base_metric("reco_x_seconds_bucket", {"reco_x_seconds": "histogram"})
'reco_x_seconds'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / "docs" / "metrics.md"
DEPLOY = ROOT / "deploy"
COLUMNS = ["Metric", "Type", "Unit", "Labels", "Role", "Meaning"]
TYPES = {"counter", "gauge", "histogram"}
ROLES = {"streamproc", "trainer", "serving"}
# Series Prometheus itself attaches to every target.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


@dataclass(frozen=True)
class Metric:
    name: str
    type: str
    unit: str
    labels: tuple[str, ...]
    role: str
    meaning: str


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def load_catalog(path: Path = CATALOG) -> dict[str, Metric]:
    """Metric name → :class:`Metric`, from the table whose header is exactly ``COLUMNS``."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|") and _cells(line) == COLUMNS)
    out: dict[str, Metric] = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = _cells(line)
        if len(cells) != len(COLUMNS):
            raise ValueError(f"catalog row has {len(cells)} cells, expected {len(COLUMNS)}: {line}")
        name, kind, unit, labels, role, meaning = cells
        m = re.fullmatch(r"`([a-z_:][a-z0-9_:]*)`", name)
        if not m:
            raise ValueError(f"catalog metric name not in backticks: {name!r}")
        label_names = () if labels in ("—", "-", "") else tuple(re.fullmatch(r"`(\w+)`", x.strip()).group(1) for x in labels.split(","))  # type: ignore[union-attr]
        if m.group(1) in out:
            raise ValueError(f"metric listed twice: {m.group(1)}")
        out[m.group(1)] = Metric(m.group(1), kind, unit, label_names, role, meaning)
    return out


# PromQL words that look like identifiers but are not metric names.
_KEYWORDS = {
    # aggregations and their modifiers
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
    "topk", "quantile", "by", "without", "on", "ignoring", "group_left", "group_right", "offset",
    "bool", "and", "or", "unless", "atan2",
    # functions
    "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
    "day_of_month", "day_of_week", "day_of_year", "days_in_month", "delta", "deriv", "exp", "floor",
    "histogram_quantile", "histogram_count", "histogram_sum", "histogram_fraction", "holt_winters",
    "hour", "idelta", "increase", "irate", "label_join", "label_replace", "ln", "log2", "log10",
    "minute", "month", "predict_linear", "rate", "resets", "round", "scalar", "sgn", "sort",
    "sort_desc", "sqrt", "time", "timestamp", "vector", "year", "avg_over_time", "min_over_time",
    "max_over_time", "sum_over_time", "count_over_time", "quantile_over_time", "stddev_over_time",
    "stdvar_over_time", "last_over_time", "present_over_time", "inf", "nan",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression (best effort, enough for our rules).

    Removes string literals, label matchers ``{...}``, grouping lists ``by (...)``, durations
    ``[5m]`` and Grafana variables (``$__rate_interval``) before picking identifiers.
    """
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in _KEYWORDS:
            continue
        if re.fullmatch(r"\d+[smhdwy]", word):
            continue
        names.add(word)
    return names


def base_metric(series: str, catalog: dict[str, str] | dict[str, Metric]) -> str | None:
    """Catalog metric a series name belongs to (``x_bucket/_sum/_count`` → histogram ``x``)."""
    def kind(name: str) -> str | None:
        v = catalog.get(name)
        return v if isinstance(v, str) or v is None else v.type

    if series in catalog or series in SYNTHETIC:
        return series
    for suffix in ("_bucket", "_sum", "_count"):
        if series.endswith(suffix) and kind(series[: -len(suffix)]) == "histogram":
            return series[: -len(suffix)]
    return None
