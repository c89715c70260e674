"""``/dashboard``: a self-contained live page of the loop's numbers (no CDN, no Grafana).

``routes(settings, registry)`` returns the starlette routes that the serving app mounts:

``GET /dashboard``
    The page (``serving/static/dashboard.html`` + ``dashboard.js`` + ``dashboard.css``, plain JS
    canvas charts, nothing fetched from outside). It polls ``/dashboard/data`` once a second and
    draws the last 10 minutes.
``GET /dashboard/static/<file>``
    The page's script and style sheet.
``GET /dashboard/data[?since=<unix seconds>]``
    JSON computed server-side. Each call scrapes (at most once per ``interval_s``, 1 s) every URL
    in ``settings.dashboard_sources`` (the ``/metrics`` of streamproc and trainer; a source that is
    down is reported, never an error) plus this process's own ``registry`` (``None`` →
    ``prometheus_client.REGISTRY``), parses the texts with
    ``prometheus_client.parser.text_string_to_metric_families`` and keeps a ring of the last 600
    scrapes. Rates and histogram quantiles compare the newest scrape with the newest one at least
    ``window_s`` (5 s) older (or the oldest kept), like ``rate()`` and ``histogram_quantile()`` over
    that window. History accumulates while something polls the endpoint.

JSON keys of ``/dashboard/data``::

    time       server time (unix s) of the answer
    interval_s seconds between scrapes;  window_s  rate/quantile window (s)
    scrapes    number of scrapes kept
    sources    [{"name": "streamproc"|"trainer"|url|"serving", "url": str, "up": bool,
                 "error": str | null}]   (the newest scrape; "serving" is this process)
    latest     the newest point (below) or null before the first scrape
    summary    headline numbers of ``latest`` (all null before it), printed by ``reco demo``:
               events_per_s, examples_per_s, model_version, feedback_latency_p50_s,
               feedback_latency_p99_s, prequential_rmse (= rmse_running), prequential_rmse_recent,
               prequential_ndcg_at_10 (= ndcg_running), drift_detections (= drift_total),
               dead_letters (= dead_letters_total), requests_per_s, request_p99_s
    history    points with t > since (all kept points without ``since``), oldest first
    feedback   item feedback analysis of the served model (:meth:`serving.feedback.FeedbackView.summary`)
               or null (no model yet, or a page mounted without it): version, items, commented,
               falling, trend_min, buckets (upper bounds of item mean sentiment, last "+Inf"),
               counts (items per bucket), top_falling (the falling list, entries as
               ``GET /v1/items/{id}/feedback``; an empty list when reads need an API key)

A point is a flat object; every value is a number or null (null = no data yet: a metric not
exposed yet, a source down, fewer than two scrapes, or no observation in the window; a counter
that is declared but has not counted yet reads 0):

    t                                     scrape time (unix s)
    sources_up, sources_total             how many sources answered
    events_per_s                          reco_streamproc_events_consumed_total, all types
    events_per_s_click / _rating / _comment / _invalid     the same by type
    invalid_total                         reco_streamproc_events_invalid_total (all reasons)
    dead_letters_per_s, dead_letters_total               reco_streamproc_dead_letters_total
    duplicates_total                      reco_streamproc_duplicates_total
    examples_per_s                        reco_streamproc_examples_produced_total, all kinds
    learned_per_s                         reco_trainer_examples_learned_total, all kinds
    feedback_latency_p50_s / _p99_s       reco_serving_feedback_latency_seconds over the window
    model_version                         serving's model version, else the trainer's
    serving_model_version, trainer_model_version
    updates_per_s                         reco_trainer_updates_published_total, all kinds
    model_swaps_per_s                     reco_serving_model_swaps_total
    rmse_running / rmse_recent            reco_trainer_prequential_rmse{window}
    mae_running / mae_recent, ndcg_running / ndcg_recent  (ndcg = ..._ndcg_at_10)
    hit_rate_running / hit_rate_recent    reco_trainer_prequential_hit_rate_at_10{window}
    drift_total, drift_error_total / _rating_total / _sentiment_total
                                          reco_trainer_drift_detections_total{signal}
    requests_per_s                        reco_serving_requests_total, all statuses
    request_p50_s / request_p99_s         reco_serving_request_duration_seconds (both leave out
                                          the routes dashboard, metrics, healthz, readyz)
    trainer_active, serving_ready         gauges (1/0)

DOM of the page (stable, for tests and people): ``<body data-state="nodata|live|error">``;
``#status`` (text: "no data yet", "live", or the error); ``#sources`` with one
``li[data-source=<name>][data-up=true|false]`` per source; for every point key ``k`` shown, an
element ``#val-<k>`` whose text is the formatted value ("—" when null) and whose ``data-value``
is the raw number ("" when null); charts are ``canvas#chart-<panel>`` with ``data-points`` (the
number of points drawn). Panels: events, deadletters, feedback, model, quality, drift, latency,
requests, sentiment. The sentiment panel (item feedback analysis, from ``feedback``): readouts
``#fb-commented``, ``#fb-falling``, ``#fb-trend_min`` (text, and ``data-value``: raw number or "");
``ol#falling-list`` with one ``li[data-item=<id>][data-trend=<trend>]`` per falling item (most
negative trend first; ``data-empty`` on the list when there is none) and ``canvas#chart-sentiment``
(bars of items per mean-sentiment bucket) whose ``data-items`` is the number of items drawn.

Examples
--------
>>> d = Dashboard([], registry=None)
>>> d.data()["latest"] is None
True
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import ProxyHandler, build_opener

import prometheus_client
from prometheus_client.parser import text_string_to_metric_families
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from serving.settings import ServingSettings
from streamproc.runtime import METRICS_PORTS

STATIC_DIR = Path(__file__).resolve().parent / "static"
SELF = "serving"
#: ``route`` labels left out of the serving request rate / latency: the dashboard's own polling,
#: scrapes and probes (serving.app names routes; path-style labels are matched by prefix too).
EXCLUDED_ROUTES = frozenset({"dashboard", "metrics", "healthz", "readyz"})
EXCLUDED_ROUTE_PREFIXES = ("/dashboard", "/metrics", "/healthz", "/readyz")

_OPENER = build_opener(ProxyHandler({}))  # sources are the service's own roles: never via a proxy

Key = tuple[str, tuple[tuple[str, str], ...]]
"""A sample's identity: (sample name, sorted label pairs)."""


#: Metric families the page uses (names without ``_total``/``_bucket``/``_count``/``_sum``);
#: lines of other families are dropped before parsing, which is most of a scrape's cost.
WANTED = frozenset({
    "reco_streamproc_events_consumed", "reco_streamproc_events_invalid", "reco_streamproc_dead_letters",
    "reco_streamproc_duplicates", "reco_streamproc_examples_produced", "reco_trainer_examples_learned",
    "reco_serving_feedback_latency_seconds", "reco_serving_model_version", "reco_trainer_model_version",
    "reco_trainer_updates_published", "reco_serving_model_swaps", "reco_trainer_prequential_rmse",
    "reco_trainer_prequential_mae", "reco_trainer_prequential_ndcg_at_10", "reco_trainer_prequential_hit_rate_at_10",
    "reco_trainer_drift_detections", "reco_serving_requests", "reco_serving_request_duration_seconds",
    "reco_trainer_active", "reco_serving_ready",
})
_SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def _family(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _keep_lines(text: str, only: frozenset[str] | set[str]) -> str:
    keep = []
    for line in text.splitlines():
        if line.startswith("#"):
            parts = line.split(None, 3)
            name = parts[2] if len(parts) > 2 else ""
        else:
            name = line.split("{", 1)[0].split(None, 1)[0] if line.strip() else ""
        if name and (_family(name) in only or name in only):
            keep.append(line)
    return "\n".join(keep) + "\n"


def parse_metrics(text: str, only: frozenset[str] | set[str] | None = None) -> dict[Key, float]:
    """Parse a Prometheus text exposition into ``{(sample name, labels): value}``.

    ``_created`` samples are dropped (they are timestamps, not values). With ``only``, just the
    families named there (without ``_total``/``_bucket``/``_count``/``_sum``) are parsed.

    Examples
    --------
    >>> text = 'x_total{type="a"} 3.0\\nx_created{type="a"} 1.7e9\\ny 1\\n'
    >>> parse_metrics("# TYPE x counter\\n" + text, only={"x"})
    {('x_total', (('type', 'a'),)): 3.0}
    """
    return parse_exposition(text, only)[0]


def parse_exposition(text: str, only: frozenset[str] | set[str] | None = None) -> tuple[dict[Key, float], frozenset[str]]:
    """:func:`parse_metrics` plus the names of the families declared (with or without samples).

    A labelled counter that never counted is declared without samples: it reads as 0, not "no data".

    Examples
    --------
    >>> parse_exposition("# TYPE x_total counter\\n")
    ({}, frozenset({'x'}))
    """
    if only is not None:
        text = _keep_lines(text, only)
    out: dict[Key, float] = {}
    families = set()
    for family in text_string_to_metric_families(text):
        families.add(_family(family.name))
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out, frozenset(families)


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """Quantile ``q`` from cumulative ``(upper bound, count)`` buckets, like Prometheus.

    Linear interpolation inside the bucket that holds the rank; the lowest bucket starts at 0; a
    rank in the ``+Inf`` bucket answers the highest finite bound. ``None`` without observations.

    Examples
    --------
    >>> histogram_quantile(0.5, [(1.0, 2), (2.0, 4), (math.inf, 4)])
    1.0
    >>> histogram_quantile(0.75, [(1.0, 2), (2.0, 4), (math.inf, 4)])
    1.5
    >>> histogram_quantile(0.5, [(1.0, 0), (math.inf, 0)]) is None
    True
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q!r}")
    bs = sorted(buckets)
    if len(bs) < 2 or not math.isinf(bs[-1][0]):
        return None
    # Counts must not decrease with the bound (a scrape can race an observation): clamp.
    fixed: list[tuple[float, float]] = []
    top = 0.0
    for le, c in bs:
        top = max(top, c)
        fixed.append((le, top))
    total = fixed[-1][1]
    if total <= 0:
        return None
    rank = q * total
    b = next(i for i, (_, c) in enumerate(fixed) if c >= rank)
    if b == len(fixed) - 1:
        return fixed[-2][0]
    if b == 0 and fixed[0][0] <= 0:
        return fixed[0][0]
    start, end, count = 0.0, fixed[b][0], fixed[b][1]
    if b > 0:
        start = fixed[b - 1][0]
        count -= fixed[b - 1][1]
        rank -= fixed[b - 1][1]
    if count <= 0:
        return end
    return start + (end - start) * (rank / count)


@dataclass(frozen=True)
class Scrape:
    """One scrape: time and, per source, its samples (``None`` when the source was down)."""

    t: float
    sources: Mapping[str, dict[Key, float] | None]
    errors: Mapping[str, str | None]
    families: Mapping[str, frozenset[str]] = dataclasses.field(default_factory=dict)
    """Per source, the families declared (a declared counter without series reads as 0)."""

    def declared(self, src: str, name: str) -> bool:
        """Whether ``src`` was up and declared the family of sample ``name``."""
        return self.sources.get(src) is not None and _family(name) in self.families.get(src, frozenset())


def _select(samples: dict[Key, float], name: str, match: Mapping[str, str] | None, exclude_routes: bool) -> dict[Key, float]:
    out = {}
    for key, v in samples.items():
        if key[0] != name:
            continue
        labels = dict(key[1])
        if match and any(labels.get(k) != want for k, want in match.items()):
            continue
        if exclude_routes:
            route = labels.get("route", "")
            if route in EXCLUDED_ROUTES or route.startswith(EXCLUDED_ROUTE_PREFIXES):
                continue
        out[key] = v
    return out


def gauge(new: Scrape, name: str, match: Mapping[str, str] | None = None, agg: str = "max") -> float | None:
    """Current value of a gauge across sources (``max`` or ``sum`` of matching series); ``None`` if absent.

    Examples
    --------
    >>> s = Scrape(1.0, {"a": {("g", ()): 4.0}}, {"a": None})
    >>> gauge(s, "g"), gauge(s, "missing")
    (4.0, None)
    """
    values = [v for samples in new.sources.values() if samples for v in _select(samples, name, match, False).values()]
    if not values:
        return None
    return max(values) if agg == "max" else sum(values)


def counter_value(new: Scrape, name: str, match: Mapping[str, str] | None = None) -> float | None:
    """Current value of a counter, matching series summed; 0 when declared without series.

    Examples
    --------
    >>> s = Scrape(1.0, {"a": {}}, {"a": None}, {"a": frozenset({"c"})})
    >>> counter_value(s, "c_total"), counter_value(s, "d_total")
    (0.0, None)
    """
    total, seen = 0.0, False
    for src, samples in new.sources.items():
        if not samples and not new.declared(src, name):
            continue
        seen = seen or new.declared(src, name)
        for v in _select(samples or {}, name, match, False).values():
            total, seen = total + v, True
    return total if seen else None


def increase(old: Scrape, new: Scrape, name: str, match: Mapping[str, str] | None = None,
             exclude_routes: bool = False) -> float | None:
    """Increase of a counter (all matching series summed) from ``old`` to ``new``.

    Counter resets count the new value as the increase (like Prometheus). A series absent from
    ``old`` while its source was up counts from 0; sources down in either scrape are skipped.
    ``None`` when no source exposes the counter in both scrapes.

    Examples
    --------
    >>> a = Scrape(0.0, {"s": {("c_total", (("t", "x"),)): 5.0}}, {"s": None})
    >>> b = Scrape(2.0, {"s": {("c_total", (("t", "x"),)): 9.0, ("c_total", (("t", "y"),)): 1.0}}, {"s": None})
    >>> increase(a, b, "c_total"), increase(a, b, "c_total", {"t": "y"})
    (5.0, 1.0)
    """
    total, seen = 0.0, False
    for src, new_samples in new.sources.items():
        old_samples = old.sources.get(src)
        if new_samples is None or old_samples is None:
            continue
        seen = seen or new.declared(src, name)  # declared, nothing counted yet: 0
        for key, v in _select(new_samples, name, match, exclude_routes).items():
            seen = True
            before = old_samples.get(key, 0.0)
            total += v - before if v >= before else v
    return total if seen else None


def rate(old: Scrape, new: Scrape, name: str, match: Mapping[str, str] | None = None,
         exclude_routes: bool = False) -> float | None:
    """Per-second rate of a counter between two scrapes (``increase / Δt``); ``None`` if unknown.

    Examples
    --------
    >>> a = Scrape(0.0, {"s": {("c_total", ()): 5.0}}, {"s": None})
    >>> b = Scrape(4.0, {"s": {("c_total", ()): 9.0}}, {"s": None})
    >>> rate(a, b, "c_total")
    1.0
    """
    dt = new.t - old.t
    if dt <= 0:
        return None
    inc = increase(old, new, name, match, exclude_routes)
    return None if inc is None else inc / dt


def window_quantile(old: Scrape, new: Scrape, q: float, name: str, match: Mapping[str, str] | None = None,
                    exclude_routes: bool = False) -> float | None:
    """``histogram_quantile(q, increase(<name>_bucket[window]))`` summed over all series but ``le``.

    Examples
    --------
    >>> def h(c1, c2): return {("h_bucket", (("le", "1.0"),)): c1, ("h_bucket", (("le", "+Inf"),)): c2}
    >>> a = Scrape(0.0, {"s": h(1, 1)}, {"s": None})
    >>> b = Scrape(5.0, {"s": h(3, 5)}, {"s": None})
    >>> window_quantile(a, b, 0.25, "h"), window_quantile(a, b, 0.9, "h")
    (0.5, 1.0)
    """
    per_le: dict[float, float] = collections.defaultdict(float)
    seen = False
    for src, new_samples in new.sources.items():
        old_samples = old.sources.get(src)
        if not new_samples or old_samples is None:
            continue
        for key, v in _select(new_samples, name + "_bucket", match, exclude_routes).items():
            le = dict(key[1]).get("le")
            if le is None:
                continue
            seen = True
            before = old_samples.get(key, 0.0)
            per_le[float(le)] += v - before if v >= before else v
    if not seen:
        return None
    return histogram_quantile(q, per_le.items())


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def compute_point(old: Scrape | None, new: Scrape) -> dict[str, float | None]:
    """The dashboard's numbers at ``new`` (rates and quantiles over ``old`` → ``new``).

    With ``old`` ``None`` (a single scrape so far), rates and quantiles are ``None``.
    """
    p: dict[str, float | None] = {"t": new.t}
    p["sources_up"] = float(sum(1 for s in new.sources.values() if s is not None))
    p["sources_total"] = float(len(new.sources))

    def r(name: str, match: Mapping[str, str] | None = None, exclude_routes: bool = False) -> float | None:
        return None if old is None else rate(old, new, name, match, exclude_routes)

    def qt(q: float, name: str, exclude_routes: bool = False) -> float | None:
        return None if old is None else window_quantile(old, new, q, name, None, exclude_routes)

    ev = "reco_streamproc_events_consumed_total"
    p["events_per_s"] = r(ev)
    for t in ("click", "rating", "comment", "invalid"):
        p[f"events_per_s_{t}"] = r(ev, {"type": t})
    p["invalid_total"] = counter_value(new, "reco_streamproc_events_invalid_total")
    p["dead_letters_per_s"] = r("reco_streamproc_dead_letters_total")
    p["dead_letters_total"] = counter_value(new, "reco_streamproc_dead_letters_total")
    p["duplicates_total"] = counter_value(new, "reco_streamproc_duplicates_total")
    p["examples_per_s"] = r("reco_streamproc_examples_produced_total")
    p["learned_per_s"] = r("reco_trainer_examples_learned_total")

    fb = "reco_serving_feedback_latency_seconds"
    p["feedback_latency_p50_s"] = qt(0.5, fb)
    p["feedback_latency_p99_s"] = qt(0.99, fb)

    p["serving_model_version"] = gauge(new, "reco_serving_model_version")
    p["trainer_model_version"] = gauge(new, "reco_trainer_model_version")
    p["model_version"] = p["serving_model_version"] if p["serving_model_version"] is not None else p["trainer_model_version"]
    p["updates_per_s"] = r("reco_trainer_updates_published_total")
    p["model_swaps_per_s"] = r("reco_serving_model_swaps_total")

    for key, metric in (("rmse", "rmse"), ("mae", "mae"), ("ndcg", "ndcg_at_10"), ("hit_rate", "hit_rate_at_10")):
        for window in ("running", "recent"):
            p[f"{key}_{window}"] = gauge(new, f"reco_trainer_prequential_{metric}", {"window": window})

    dr = "reco_trainer_drift_detections_total"
    p["drift_total"] = counter_value(new, dr)
    for signal in ("error", "rating", "sentiment"):
        p[f"drift_{signal}_total"] = counter_value(new, dr, {"signal": signal})

    p["requests_per_s"] = r("reco_serving_requests_total", exclude_routes=True)
    rd = "reco_serving_request_duration_seconds"
    p["request_p50_s"] = qt(0.5, rd, exclude_routes=True)
    p["request_p99_s"] = qt(0.99, rd, exclude_routes=True)

    p["trainer_active"] = gauge(new, "reco_trainer_active")
    p["serving_ready"] = gauge(new, "reco_serving_ready")
    return {k: _finite(v) for k, v in p.items()}


def summary(point: Mapping[str, float | None] | None) -> dict[str, float | None]:
    """The few headline numbers of a point (``reco demo`` prints them); all ``None`` without one.

    Examples
    --------
    >>> summary(None)["events_per_s"] is None
    True
    """
    p = point or {}
    return {
        "events_per_s": p.get("events_per_s"),
        "examples_per_s": p.get("examples_per_s"),
        "model_version": p.get("model_version"),
        "feedback_latency_p50_s": p.get("feedback_latency_p50_s"),
        "feedback_latency_p99_s": p.get("feedback_latency_p99_s"),
        "prequential_rmse": p.get("rmse_running"),
        "prequential_rmse_recent": p.get("rmse_recent"),
        "prequential_ndcg_at_10": p.get("ndcg_running"),
        "drift_detections": p.get("drift_total"),
        "dead_letters": p.get("dead_letters_total"),
        "requests_per_s": p.get("requests_per_s"),
        "request_p99_s": p.get("request_p99_s"),
    }


def source_name(url: str) -> str:
    """A short name for a source URL: the role on its default port, else ``host:port``.

    Examples
    --------
    >>> source_name("http://127.0.0.1:9101/metrics"), source_name("http://trainer:9102/metrics")
    ('streamproc', 'trainer')
    >>> source_name("http://10.0.0.5:8080/metrics")
    '10.0.0.5:8080'
    """
    u = urlparse(url)
    host = u.hostname or url
    if host in ("streamproc", "trainer"):
        return host
    return {port: role for role, port in METRICS_PORTS.items()}.get(u.port or 0, f"{host}:{u.port}" if u.port else host)


class Dashboard:
    """Scrapes the sources into a ring and computes the dashboard's points.

    Parameters
    ----------
    sources
        ``/metrics`` URLs of the other roles.
    registry
        This process's registry (``None`` → ``prometheus_client.REGISTRY``); ``False`` leaves it out.
    interval_s
        Minimum seconds between two scrapes (more frequent ``/dashboard/data`` calls reuse the last).
    window_s
        Rates and quantiles compare the newest scrape with the newest one at least this much older.
    keep
        Scrapes (and points) kept: 600 at one a second is 10 minutes.
    timeout_s
        Per-source HTTP timeout of a scrape.

    Examples
    --------
    >>> d = Dashboard([], registry=prometheus_client.CollectorRegistry())
    >>> p = d.record({}, now=10.0)
    >>> p["t"], p["events_per_s"], d.data()["scrapes"]
    (10.0, None, 1)
    """

    def __init__(self, sources: Iterable[str], registry: Any = None, *, interval_s: float = 1.0,
                 window_s: float = 5.0, keep: int = 600, timeout_s: float = 0.5) -> None:
        if interval_s < 0:
            raise ValueError(f"interval_s must be >= 0, got {interval_s!r}")
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s!r}")
        if keep < 2:
            raise ValueError(f"keep must be >= 2, got {keep!r}")
        self.sources = [s.strip() for s in sources if s and s.strip()]
        self.registry = prometheus_client.REGISTRY if registry is None else registry
        self.interval_s = interval_s
        self.window_s = window_s
        self.keep = keep
        self.timeout_s = timeout_s
        self._scrapes: collections.deque[Scrape] = collections.deque(maxlen=keep)
        self._points: collections.deque[dict[str, float | None]] = collections.deque(maxlen=keep)
        self._lock = threading.Lock()
        self._busy = False

    def _self_text(self) -> str | None:
        if self.registry is False:
            return None
        return prometheus_client.generate_latest(self.registry).decode()

    def record(self, texts: Mapping[str, str | None], now: float | None = None,
               errors: Mapping[str, str | None] | None = None) -> dict[str, float | None]:
        """Add a scrape made of exposition ``texts`` per source (``None`` = down); return its point."""
        now = time.time() if now is None else now
        errs: dict[str, str | None] = dict(errors or {})
        parsed: dict[str, dict[Key, float] | None] = {}
        families: dict[str, frozenset[str]] = {}
        for src, text in texts.items():
            if text is None:
                parsed[src] = None
                errs.setdefault(src, "down")
                continue
            try:
                parsed[src], families[src] = parse_exposition(text, WANTED)
                errs[src] = None
            except Exception as exc:  # a garbled exposition is a source that is down, not a 500
                parsed[src] = None
                errs[src] = f"unparsable metrics: {exc}"[:200]
        new = Scrape(now, parsed, errs, families)
        with self._lock:
            old = self._window_start(new)
            point = compute_point(old, new)
            self._scrapes.append(new)
            self._points.append(point)
        return point

    def _window_start(self, new: Scrape) -> Scrape | None:
        older = [s for s in self._scrapes if s.t < new.t]
        if not older:
            return None
        before = [s for s in older if s.t <= new.t - self.window_s]
        return before[-1] if before else older[0]

    def _fetch(self, url: str) -> tuple[str | None, str | None]:
        # urllib, not httpx: httpx logs every request at INFO, twice a second in serve's log.
        try:
            with _OPENER.open(url, timeout=self.timeout_s) as resp:
                return resp.read().decode("utf-8", "replace"), None
        except Exception as exc:  # any failure means "down" on the page, with the reason
            return None, f"{type(exc).__name__}: {exc}"[:200]

    async def scrape(self, now: float | None = None) -> dict[str, float | None] | None:
        """Fetch every source and this process's registry, then :meth:`record` the scrape.

        Skipped (returns ``None``) when the last scrape is younger than ``interval_s`` or another
        scrape is under way.
        """
        now = time.time() if now is None else now
        with self._lock:
            last = self._scrapes[-1].t if self._scrapes else None
            if self._busy or (last is not None and now - last < self.interval_s):
                return None
            self._busy = True
        try:
            texts: dict[str, str | None] = {}
            errors: dict[str, str | None] = {}
            if self.sources:
                results = await asyncio.gather(*(run_in_threadpool(self._fetch, u) for u in self.sources))
                for url, (text, err) in zip(self.sources, results, strict=False):
                    texts[url], errors[url] = text, err
            now = time.time()

            def work() -> dict[str, float | None]:  # parsing is CPU work: off the event loop
                if self.registry is not False:
                    texts[SELF] = self._self_text()
                return self.record(texts, now, errors)

            return await run_in_threadpool(work)
        finally:
            with self._lock:
                self._busy = False

    def data(self, since: float | None = None) -> dict[str, Any]:
        """The JSON document of ``/dashboard/data`` (keys in the module docstring)."""
        with self._lock:
            points = list(self._points)
            last = self._scrapes[-1] if self._scrapes else None
        sources = []
        if last is not None:
            for src, samples in last.sources.items():
                sources.append({
                    "name": SELF if src == SELF else source_name(src),
                    "url": "(this process)" if src == SELF else src,
                    "up": samples is not None,
                    "error": last.errors.get(src),
                })
        else:
            sources = [{"name": source_name(u), "url": u, "up": False, "error": "not scraped yet"} for u in self.sources]
        history = points if since is None else [p for p in points if (p["t"] or 0) > since]
        latest = points[-1] if points else None
        return {
            "time": time.time(),
            "interval_s": self.interval_s,
            "window_s": self.window_s,
            "scrapes": len(points),
            "sources": sources,
            "latest": latest,
            "summary": summary(latest),
            "history": history,
        }


def routes(settings: ServingSettings, registry: Any = None, *,
           feedback: Callable[[], dict[str, Any] | None] | None = None) -> list[BaseRoute]:
    """Starlette routes of the dashboard (page + JSON data); mounted by the serving app.

    ``feedback`` returns the item feedback summary of the served model (the data's ``feedback``
    key); the falling list's item ids are left out when reads need an API key (the page has none).

    Examples
    --------
    >>> [getattr(r, "path", None) for r in routes(ServingSettings(dashboard_sources=""))]
    ['/dashboard', '/dashboard/data', '/dashboard/static']
    """
    dash = Dashboard(settings.dashboard_sources.split(","), registry)

    async def page(request: Request) -> FileResponse:
        return FileResponse(STATIC_DIR / "dashboard.html", media_type="text/html", headers={"Cache-Control": "no-cache"})

    async def data(request: Request) -> JSONResponse:
        raw = request.query_params.get("since")
        try:
            since = float(raw) if raw not in (None, "") else None
        except ValueError:
            return JSONResponse({"detail": f"since must be a number, got {raw!r}"}, status_code=400)
        await dash.scrape()
        body = dash.data(since)
        body["feedback"] = await run_in_threadpool(feedback_summary) if feedback is not None else None
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    def feedback_summary() -> dict[str, Any] | None:
        assert feedback is not None
        s = feedback()
        if s is not None and settings.read_api_key_required and not settings.auth_disabled:
            s = {**s, "top_falling": []}  # item ids are a read: the page carries no key
        return s

    page_route = Route("/dashboard", page, methods=["GET"], name="dashboard")
    data_route = Route("/dashboard/data", data, methods=["GET"], name="dashboard_data")
    static = Mount("/dashboard/static", app=StaticFiles(directory=STATIC_DIR), name="dashboard_static")
    page_route.dashboard = dash  # type: ignore[attr-defined]  # reachable for tests and the lead
    return [page_route, data_route, static]
