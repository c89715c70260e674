"""Feedback analysis people can read: what the comments on each item say, and which items are slipping.

The trainer keeps per-item statistics (:class:`trainer.feedback.ItemFeedback`) and sends them in
every model update as the item tensor ``item_feedback`` (columns
:data:`trainer.feedback.FEEDBACK_COLUMNS`); the served model keeps them per item row. This module
answers from the model being served:

==========================================  ====================================================
``GET /v1/items/{item_id}/feedback``         one item: ``comments``, ``comments_scored`` (with a
                                             sentiment estimate), ``sentiment_mean`` (all scored
                                             comments), ``sentiment_recent`` (~last 20),
                                             ``ratings``, ``rating_mean``, ``trend`` (recent minus
                                             the item's slow average, rating units; null below 10
                                             scored comments), ``trend_z`` and ``falling``;
                                             unknown item → 404 ``unknown_item``
``GET /v1/items/feedback``                   ``?order=falling|rising|most_commented&limit=20``
                                             (limit 1..1000): items whose sentiment trend is most
                                             negative (``falling``: trend < 0, most negative
                                             first), most positive (``rising``), or with the most
                                             comments; each entry as above. Bad parameter → 400
                                             naming it (``field``)
==========================================  ====================================================

Both read like the recommendations endpoint (``X-API-Key`` when ``RECO_READ_API_KEY_REQUIRED``)
and answer 503 ``no_model`` before the first model. Numbers are rounded to 4 decimals; a value
with nothing behind it is ``null``.

:class:`FeedbackView` summarises a model version once (cached by version): the counts behind the
``reco_serving_items_*`` gauges (read when scraped, see :meth:`FeedbackView.bind`) and the
dashboard's panel (:meth:`FeedbackView.summary`: the falling list and the distribution of item
mean sentiment over :data:`SENTIMENT_BUCKETS`).

Examples
--------
>>> import numpy as np
>>> from trainer.updates import ModelUpdate
>>> from serving.model import ServingModel
>>> fb = np.zeros((2, len(FEEDBACK_COLUMNS)), np.float32)
>>> fb[:, :6] = [[12, 12, 3.9, 2.1, 4, 4.25], [3, 3, 4.5, 4.5, 0, 0]]
>>> fb[:, 6:] = [[-1.6, -5.2, 1, 1], [0, 0, 0, 0]]
>>> snap = ModelUpdate({"version": 3, "kind": "snapshot", "user_ids": [], "item_ids": ["a", "b"]},
...                    {"item_factors": np.zeros((2, 2), np.float32), "item_feedback": fb})
>>> m = ServingModel.build(None, [snap])
>>> item_feedback(m, "a")["falling"], item_feedback(m, "b")["trend"], item_feedback(m, "zzz")
(True, None, None)
>>> [x["item_id"] for x in ranked(m, "falling", 10)], [x["item_id"] for x in ranked(m, "most_commented", 10)]
(['a'], ['a', 'b'])
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from serving.metrics import ServingMetrics
from serving.model import ServingModel
from trainer.feedback import FEEDBACK_COLUMNS

__all__ = ["FeedbackView", "item_feedback", "ranked", "routes", "ORDERS", "SENTIMENT_BUCKETS", "MAX_LIMIT"]

log = logging.getLogger(__name__)

ORDERS = ("falling", "rising", "most_commented")
MAX_LIMIT = 1000
DEFAULT_LIMIT = 20
#: Upper bounds of the item mean-sentiment distribution (rating units; then +Inf), like histogram ``le``.
SENTIMENT_BUCKETS = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0)
_COL = {name: j for j, name in enumerate(FEEDBACK_COLUMNS)}


def _num(x: float) -> float | None:
    return round(float(x), 4) if math.isfinite(x) else None


def _table(model: ServingModel) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids by row, the float32 feedback rows, live-row mask); columns are read as strided views,
    never copied whole (a summary runs on every model swap)."""
    ids, fb, dead = model.item_feedback()
    live = np.ones(len(fb), bool)
    if len(dead):
        live[dead[dead < len(fb)]] = False
    return ids, fb, live


def _entry(item_id: str, row: np.ndarray) -> dict[str, Any]:
    """One item's JSON: counts as ints, ``falling`` as a bool, values with nothing behind them null."""
    c = _COL
    scored, trended = row[c["comments_scored"]] > 0, row[c["trended"]] >= 0.5
    return {
        "item_id": item_id,
        "comments": int(row[c["comments"]]),
        "comments_scored": int(row[c["comments_scored"]]),
        "sentiment_mean": _num(row[c["sentiment_mean"]]) if scored else None,
        "sentiment_recent": _num(row[c["sentiment_recent"]]) if scored else None,
        "ratings": int(row[c["ratings"]]),
        "rating_mean": _num(row[c["rating_mean"]]) if row[c["ratings"]] > 0 else None,
        "trend": _num(row[c["trend"]]) if trended else None,
        "trend_z": _num(row[c["trend_z"]]) if trended else None,
        "falling": bool(row[c["falling"]] >= 0.5),
    }


def item_feedback(model: ServingModel, item_id: str) -> dict[str, Any] | None:
    """The feedback of one item in ``model`` (None: unknown or expired item)."""
    r = model.item_row(item_id)
    if r is None:
        return None
    _, fb, _ = model.item_feedback()
    return _entry(item_id, fb[r].astype(np.float64))


def ranked(model: ServingModel, order: str, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` items by ``order`` (:data:`ORDERS`); ties keep row order (oldest item first)."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit!r}")
    ids, t, live = _table(model)
    if order == "most_commented":
        key = t[:, _COL["comments"]]
        ok = live & (key > 0)
        key = -key
    else:
        trend = t[:, _COL["trend"]]
        ok = live & (t[:, _COL["trended"]] >= 0.5) & ((trend < 0) if order == "falling" else (trend > 0))
        key = trend if order == "falling" else -trend
    rows = np.flatnonzero(ok)
    if len(rows) > limit:
        rows = rows[np.argpartition(key[rows], limit - 1)[:limit]]
    rows = rows[np.lexsort((rows, key[rows]))]
    return [_entry(ids[r], t[r].astype(np.float64)) for r in rows.tolist()]


class FeedbackView:
    """Per model version: counts for the ``reco_serving_items_*`` gauges and the dashboard panel.

    Parameters
    ----------
    current
        Returns the model being served (``ModelStore.current``), or None before the first.
    metrics
        Whose ``reco_serving_items_*`` gauges read this view when scraped (:meth:`bind`; None: none).
    top
        Items in the dashboard's falling list.
    """

    def __init__(self, current: Callable[[], ServingModel | None], metrics: ServingMetrics | None = None, *, top: int = 10) -> None:
        if top < 1:
            raise ValueError(f"top must be >= 1, got {top!r}")
        self.current, self.top = current, top
        self._lock = threading.Lock()
        self._cached: tuple[int, dict[str, Any]] | None = None
        self._bound: ServingMetrics | None = None
        if metrics is not None:
            self.bind(metrics)

    def summary(self, model: ServingModel | None = None) -> dict[str, Any] | None:
        """``{version, items, commented, falling, trend_min, buckets, counts, top_falling}`` for
        ``model`` (default: the current one); None without a model. ``buckets`` are the upper
        bounds of :data:`SENTIMENT_BUCKETS` plus ``"+Inf"``, ``counts`` the items whose mean
        sentiment falls in each (not cumulative)."""
        model = self.current() if model is None else model
        if model is None:
            return None
        with self._lock:
            if self._cached is not None and self._cached[0] == model.version:
                return self._cached[1]
        _, t, live = _table(model)
        scored = live & (t[:, _COL["comments_scored"]] > 0)
        falling = live & (t[:, _COL["falling"]] >= 0.5)
        trend = t[live & (t[:, _COL["trended"]] >= 0.5), _COL["trend"]].astype(np.float64)
        means = t[scored, _COL["sentiment_mean"]].astype(np.float64)
        edges = np.array(SENTIMENT_BUCKETS)
        counts = np.bincount(np.searchsorted(edges, means, side="left"), minlength=len(edges) + 1)
        out = {
            "version": model.version,
            "items": int(live.sum()),
            "commented": int(scored.sum()),
            "falling": int(falling.sum()),
            "trend_min": _num(trend.min()) if len(trend) else None,
            "buckets": [*SENTIMENT_BUCKETS, "+Inf"],
            "counts": counts.tolist(),
            "top_falling": ranked(model, "falling", self.top),
        }
        with self._lock:
            self._cached = (model.version, out)
        return out

    def bind(self, metrics: ServingMetrics) -> None:
        """Make the ``reco_serving_items_*`` gauges read the current model's summary when scraped
        (computed once per model version, nothing done per swap)."""
        if self._bound is metrics:
            return
        self._bound = metrics

        def stat(key: str, default: float = 0.0) -> Callable[[], float]:
            def read() -> float:
                s = self.summary()
                v = None if s is None else s[key]
                return float(default if v is None else v)
            return read

        def cumulative(j: int) -> Callable[[], float]:
            def read() -> float:
                s = self.summary()
                return 0.0 if s is None else float(sum(s["counts"][: j + 1]))
            return read

        metrics.items_commented.set_function(stat("commented"))
        metrics.items_sentiment_falling.set_function(stat("falling"))
        metrics.items_sentiment_trend_min.set_function(stat("trend_min"))
        for j, le in enumerate((*SENTIMENT_BUCKETS, math.inf)):
            metrics.items_by_sentiment.labels("+Inf" if le == math.inf else repr(float(le))).set_function(cumulative(j))


def _json(body: Any, status: int = 200) -> Response:
    return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


def _error(status: int, detail: str, message: str, **extra: Any) -> Response:
    return _json({"detail": detail, "message": message, **extra}, status)


def routes(current: Callable[[], ServingModel | None], read_ok: Callable[[Request], bool] = lambda r: True) -> list[BaseRoute]:
    """The two feedback routes (the list first: ``/v1/items/feedback`` is not an item's page)."""

    async def listing(request: Request) -> Response:
        if not read_ok(request):
            return _error(401, "unauthorized", "missing or wrong X-API-Key")
        q = request.query_params
        order = q.get("order", "falling")
        if order not in ORDERS:
            return _error(400, "invalid_order", f"order must be one of {', '.join(ORDERS)}, got {order[:40]!r}", field="order")
        raw = q.get("limit", str(DEFAULT_LIMIT))
        try:
            limit = int(raw)
        except ValueError:
            return _error(400, "invalid_limit", f"limit must be an integer, got {raw[:40]!r}", field="limit")
        if not 1 <= limit <= MAX_LIMIT:
            return _error(400, "limit_out_of_range", f"limit must be between 1 and {MAX_LIMIT}, got {limit}", field="limit")
        model = current()
        if model is None:
            return _error(503, "no_model", "no model loaded yet")
        items = ranked(model, order, limit)
        return _json({"order": order, "limit": limit, "version": model.version, "items": items})

    async def one(request: Request) -> Response:
        if not read_ok(request):
            return _error(401, "unauthorized", "missing or wrong X-API-Key")
        model = current()
        if model is None:
            return _error(503, "no_model", "no model loaded yet")
        item_id = request.path_params["item_id"]
        out = item_feedback(model, item_id)
        if out is None:
            return _error(404, "unknown_item", f"item {item_id[:200]!r} is not in the served model (version {model.version})")
        return _json({**out, "version": model.version})

    return [Route("/v1/items/feedback", listing, methods=["GET"]),
            Route("/v1/items/{item_id:path}/feedback", one, methods=["GET"])]
