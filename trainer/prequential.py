"""Prequential (test-then-train) metrics over the predictions :meth:`HybridMF.learn_batch` returns.

Ratings (and comments that carry a rating): RMSE and MAE of the clipped prediction against the
target. Ranking: given the model's full-catalogue ranks of a sample of positive events (every
feedback kind), hit-rate@10 and NDCG@10 of those; otherwise, from clicks: the prediction is the fraction of ``RANK_CANDIDATES`` sampled items the clicked item
outscores, so its rank is ``round((1 - score) * RANK_CANDIDATES)`` (0 = top); hit-rate@10 counts
ranks below 10 and NDCG@10 is ``1 / log2(rank + 2)`` for those (one relevant item). Each metric is
kept running (since start) and over the most recent ``window`` examples of its kind.
Metrics with no data yet are ``None``.

Examples
--------
>>> import numpy as np
>>> from streamproc.examples import ExampleBatch, KIND_RATING, KIND_CLICK
>>> b = ExampleBatch.build(event_ids=["a", "b", "c"], user_ids=["u"] * 3, item_ids=["i", "j", "k"],
...     kinds=[KIND_RATING, KIND_RATING, KIND_CLICK], targets=[4.0, 2.0, float("nan")],
...     event_times=[0.0] * 3, published=[0.0] * 3, processed=[0.0] * 3)
>>> p = Prequential(window=10)
>>> p.update_batch(b, np.array([3.0, 2.0, 1.0]))
>>> m = p.get()
>>> round(m["rmse"], 4), m["mae"], m["hit_rate_at_10"], m["ndcg_at_10"]
(0.7071, 0.5, 1.0, 1.0)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from streamproc.examples import KIND_CLICK, KIND_COMMENT, KIND_RATING, ExampleBatch
from trainer.model import RANK_CANDIDATES

__all__ = ["Prequential", "click_ranks"]


def click_ranks(scores: np.ndarray) -> np.ndarray:
    """0-based rank of the clicked item among ``RANK_CANDIDATES + 1`` from a click score."""
    return np.rint((1.0 - np.asarray(scores, np.float64)) * RANK_CANDIDATES).astype(np.int64)


class _Window:
    """Sum over the last ``size`` values (ring buffer)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._buf = np.zeros(size, np.float64)
        self._n = 0

    def extend(self, values: np.ndarray) -> None:
        values = values[-self.size :]
        m = len(values)
        if not m:
            return
        idx = (self._n + np.arange(m)) % self.size
        self._buf[idx] = values
        self._n += m

    def mean(self) -> float | None:
        k = min(self._n, self.size)
        return float(self._buf[:k].mean()) if k else None if k == 0 else None

    def state(self) -> tuple[dict[str, Any], np.ndarray]:
        return {"size": self.size, "n": self._n}, self._buf[: min(self._n, self.size)].copy()

    @classmethod
    def from_state(cls, s: dict[str, Any], buf: Any = None) -> _Window:
        """``buf``: the values (an array; before the ``(meta, arrays)`` state, a list in ``s["buf"]``)."""
        w = cls(s["size"])
        w._n = int(s["n"])
        values = np.asarray(s["buf"] if buf is None else buf, np.float64)
        w._buf[: len(values)] = values
        return w


class Prequential:
    """Running and windowed rating error and click ranking quality.

    Parameters
    ----------
    window
        Examples (per kind) in the ``*_recent`` metrics.
    """

    _KEYS = ("se", "ae", "hit", "ndcg")

    def __init__(self, window: int = 1000) -> None:
        if window < 1:
            raise ValueError(f"window={window!r}: must be >= 1")
        self.window = window
        self._sum = dict.fromkeys(self._KEYS, 0.0)
        self._n_ratings = 0
        self._n_clicks = 0
        self._n_ranked = 0
        self._win = {k: _Window(window) for k in self._KEYS}

    def update_batch(self, batch: ExampleBatch, predictions: np.ndarray, ranks: np.ndarray | None = None) -> None:
        """Score one batch of predictions (as returned by ``learn_batch``) against its targets.

        ``ranks``: the model's full-catalogue ranks of sampled positive events (NaN = not ranked,
        inf = a miss), e.g. :attr:`HybridMF.last_ranks`; then hit rate and NDCG@10 come from
        those, over every kind of positive feedback, instead of the clicks' sampled ranks.
        """
        rec = batch.records
        kinds, targets = rec["kind"], rec["target"].astype(np.float64)
        predictions = np.asarray(predictions, np.float64)
        rated = ((kinds == KIND_RATING) | (kinds == KIND_COMMENT)) & ~np.isnan(targets)
        if rated.any():
            err = predictions[rated] - targets[rated]
            se, ae = err * err, np.abs(err)
            self._sum["se"] += float(se.sum())
            self._sum["ae"] += float(ae.sum())
            self._n_ratings += len(err)
            self._win["se"].extend(se)
            self._win["ae"].extend(ae)
        clicks = kinds == KIND_CLICK
        self._n_clicks += int(clicks.sum())
        if ranks is not None and len(ranks) == len(kinds):
            r = np.asarray(ranks, np.float64)
            r = r[~np.isnan(r)]
        else:
            r = click_ranks(predictions[clicks]).astype(np.float64) if clicks.any() else np.empty(0)
        if len(r):
            with np.errstate(divide="ignore"):
                ndcg = np.where(r < 10, 1.0 / np.log2(np.minimum(r, 1e9) + 2.0), 0.0)
            hit = (r < 10).astype(np.float64)
            self._sum["hit"] += float(hit.sum())
            self._sum["ndcg"] += float(ndcg.sum())
            self._n_ranked += len(hit)
            self._win["hit"].extend(hit)
            self._win["ndcg"].extend(ndcg)

    def get(self) -> dict[str, float | None]:
        """``rmse``, ``mae``, ``ndcg_at_10``, ``hit_rate_at_10`` and their ``*_recent``, plus counts."""
        nr, nc = self._n_ratings, self._n_ranked
        w = {k: v.mean() for k, v in self._win.items()}
        return {
            "rmse": math.sqrt(self._sum["se"] / nr) if nr else None,
            "mae": self._sum["ae"] / nr if nr else None,
            "rmse_recent": math.sqrt(w["se"]) if w["se"] is not None else None,
            "mae_recent": w["ae"],
            "ndcg_at_10": self._sum["ndcg"] / nc if nc else None,
            "hit_rate_at_10": self._sum["hit"] / nc if nc else None,
            "ndcg_at_10_recent": w["ndcg"],
            "hit_rate_at_10_recent": w["hit"],
            "n_ratings": nr,
            "n_clicks": self._n_clicks,
            "n_ranked": nc,
        }

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON-able meta (counts, sums) and arrays (the windows' values, ``win_<key>``) for checkpoints."""
        wins = {k: v.state() for k, v in self._win.items()}
        meta = {"window": self.window, "sum": dict(self._sum), "n_ratings": self._n_ratings, "n_clicks": self._n_clicks,
                "n_ranked": self._n_ranked, "win": {k: m for k, (m, _) in wins.items()}}
        return meta, {f"win_{k}": buf for k, (_, buf) in wins.items()}

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> Prequential:
        """Rebuild from :meth:`state` output; also from the single dict older checkpoints hold
        (``from_state(d)``: the windows' values inline)."""
        p = cls(meta["window"])
        p._sum = {k: float(v) for k, v in meta["sum"].items()}
        p._n_ratings, p._n_clicks = int(meta["n_ratings"]), int(meta["n_clicks"])
        p._n_ranked = int(meta.get("n_ranked", meta["n_clicks"]))
        arrays = arrays or {}
        p._win = {k: _Window.from_state(v, arrays.get(f"win_{k}")) for k, v in meta["win"].items()}
        return p
