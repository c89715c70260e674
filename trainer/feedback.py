"""Per-item feedback analysis: what the comments on each item say, and whether that is changing.

:class:`ItemFeedback` keeps running statistics per item *row* of the model (rows grow; a row freed
by expiry or erasure is reset with :meth:`ItemFeedback.forget` before it is reused):

* comments (every comment example) and the comments with a sentiment estimate ("scored": the
  sentiment head's rating-scale estimate of the comment's text);
* the mean estimated sentiment of the scored comments (all of them) and a recent-window mean: an
  EWMA over about the item's last ``recent_comments`` comments (weight ``2 / (recent_comments + 1)``);
* ratings (explicit ratings and comments that carry a rating) and their mean;
* the *trend*: the recent EWMA minus a slow EWMA over about ``slow_comments`` comments, in rating
  units (negative = the latest comments read worse than the item's usual ones). Both EWMAs start
  as plain running means (weight ``max(1/n, alpha)``), so the first comments never make a trend
  by themselves. The trend is reported once the item has ``min_comments`` scored comments.
* ``trend_z``: the trend over its standard error under "nothing changed" — the item's sentiment
  spread (exponentially weighted variance at the slow rate, floored at ``sigma_min``) times the
  exact standard deviation factor of fast minus slow EWMA for this item's comment count (tracked
  alongside, so it is right during the warm-up too);
* *falling*: at least ``min_comments`` scored comments, ``trend <= -min_drop`` and
  ``trend_z <= -z_min``. The two conditions together keep noise off the list: ``min_drop`` alone
  flags items whose comments are just very spread out, ``z_min`` alone flags tiny moves of items
  with thousands of very similar comments.

Sentiment estimates are the model's: they move a little as the sentiment head learns, which all
items share; the trend compares one item with its own recent past, so a head that keeps improving
shifts the trend of every item only as much as the head changed in ``recent_comments`` comments.

Updates are vectorised: a batch is applied in rounds, round ``k`` taking every item's ``k``-th
example in the batch, so an item's comments are folded in their stream order.

Exported per row (:meth:`ItemFeedback.export`, tensor ``item_feedback``, float32, columns
:data:`FEEDBACK_COLUMNS`; model updates carry finite values only, so "nothing to report" is 0 and
the counts / ``trended`` say which values mean something)::

    0 comments          comment examples seen
    1 comments_scored   comments with a sentiment estimate
    2 sentiment_mean    mean estimated sentiment (rating units; 0 when comments_scored is 0)
    3 sentiment_recent  EWMA over ~recent_comments comments (0 when comments_scored is 0)
    4 ratings           ratings and rated comments
    5 rating_mean       their mean (0 when ratings is 0)
    6 trend             sentiment_recent - slow EWMA (0 when not trended)
    7 trend_z           trend / its standard error (0 when not trended)
    8 falling           1.0 when flagged falling, else 0.0
    9 trended           1.0 once the item has min_comments scored comments (trend and trend_z valid)

Examples
--------
>>> import numpy as np
>>> fb = ItemFeedback(min_comments=10)
>>> rows = np.r_[np.zeros(40, int), np.ones(40, int)]
>>> sent = np.r_[np.full(30, 4.5), np.full(10, 1.5), np.full(40, 4.0)]
>>> fb.update(rows, np.full(80, 2), np.full(80, np.nan), sent)
>>> t = fb.export(np.array([0, 1]))["item_feedback"]
>>> t[:, 0].tolist(), t[:, FEEDBACK_COLUMNS.index("falling")].tolist()
([40.0, 40.0], [1.0, 0.0])
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["FEEDBACK_COLUMNS", "FEEDBACK_TENSOR", "ItemFeedback"]

FEEDBACK_TENSOR = "item_feedback"
FEEDBACK_COLUMNS = ("comments", "comments_scored", "sentiment_mean", "sentiment_recent", "ratings", "rating_mean",
                    "trend", "trend_z", "falling", "trended")

_KIND_RATING, _KIND_COMMENT = 0, 2  # streamproc.examples.KIND_*; kept literal to stay import-light
_STATE_VERSION = 1
# state columns (float64 per row)
(_C, _NS, _MEAN, _FAST, _SLOW, _VAR, _VF, _VS, _CV, _NR, _RMEAN) = range(11)
_NSTATE = 11


class ItemFeedback:
    """Running comment-sentiment and rating statistics per item row, with a falling-trend flag.

    Parameters
    ----------
    recent_comments
        Span of the recent-window EWMA (weight ``2 / (recent_comments + 1)``).
    slow_comments
        Span of the slow EWMA the recent one is compared with (> ``recent_comments``).
    min_comments
        Scored comments an item needs before it has a trend (and can be flagged falling).
    min_drop
        Smallest fall (rating units, recent minus slow) that flags an item.
    z_min
        The fall must also be at least this many standard errors.
    sigma_min
        Floor of the per-item sentiment spread (rating units) used for the standard error: a few
        identical comments do not make every later wobble significant.
    """

    def __init__(self, recent_comments: int = 20, slow_comments: int = 500, min_comments: int = 10,
                 min_drop: float = 0.5, z_min: float = 4.0, sigma_min: float = 0.5) -> None:
        for name, v in (("recent_comments", recent_comments), ("slow_comments", slow_comments), ("min_comments", min_comments)):
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if slow_comments <= recent_comments:
            raise ValueError(f"slow_comments must be > recent_comments ({recent_comments}), got {slow_comments!r}")
        for name, f in (("min_drop", min_drop), ("z_min", z_min), ("sigma_min", sigma_min)):
            if not (isinstance(f, (int, float)) and math.isfinite(f) and f >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {f!r}")
        self.recent_comments = int(recent_comments)
        self.slow_comments = int(slow_comments)
        self.min_comments = int(min_comments)
        self.min_drop = float(min_drop)
        self.z_min = float(z_min)
        self.sigma_min = float(sigma_min)
        self._S = np.zeros((256, _NSTATE), np.float64)
        self._n = 0  # rows in use: 1 + the highest row updated

    def get_params(self) -> dict[str, Any]:
        return {"recent_comments": self.recent_comments, "slow_comments": self.slow_comments,
                "min_comments": self.min_comments, "min_drop": self.min_drop, "z_min": self.z_min,
                "sigma_min": self.sigma_min}

    @property
    def n_rows(self) -> int:
        return self._n

    def _grow(self, need: int) -> None:
        if need > len(self._S):
            grown = np.zeros((max(need, 2 * len(self._S)), _NSTATE), np.float64)
            grown[: self._n] = self._S[: self._n]
            self._S = grown
        self._n = max(self._n, need)

    # ------------------------------------------------------------------ learning
    def update(self, item_rows: np.ndarray, kinds: np.ndarray, ratings: np.ndarray, sentiment: np.ndarray) -> None:
        """Fold a batch of examples in, in order.

        Parameters
        ----------
        item_rows
            The model's item row of each example (int, >= 0).
        kinds
            Example kinds (0 rating, 1 click, 2 comment, 3 item content); only ratings and comments count.
        ratings
            The rating target (NaN if none): ratings, and comments that carry a rating.
        sentiment
            The sentiment head's rating-scale estimate for comments (NaN where there is none).
        """
        rows = np.asarray(item_rows, np.int64)
        kinds = np.asarray(kinds)
        ratings = np.asarray(ratings, np.float64)
        sentiment = np.asarray(sentiment, np.float64)
        n = len(rows)
        if not (len(kinds) == len(ratings) == len(sentiment) == n):
            raise ValueError(f"item_rows, kinds, ratings, sentiment must have one value per example, got lengths "
                             f"{n}, {len(kinds)}, {len(ratings)}, {len(sentiment)}")
        if n == 0:
            return
        if rows.min() < 0:
            raise ValueError(f"item_rows must be >= 0, got {int(rows.min())}")
        is_comment = kinds == _KIND_COMMENT
        rated = ((kinds == _KIND_RATING) | is_comment) & np.isfinite(ratings)
        scored = is_comment & np.isfinite(sentiment)
        if not (is_comment.any() or rated.any()):
            return
        self._grow(int(rows.max()) + 1)
        S = self._S
        if is_comment.any():
            hit, cnt = np.unique(rows[is_comment], return_counts=True)
            S[hit, _C] += cnt
        self._fold_ratings(rows[rated], ratings[rated])
        if scored.any():
            self._fold_sentiment(rows[scored], sentiment[scored])

    @staticmethod
    def _rounds(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Order (stable by row) and, in that order, each example's occurrence index within its row."""
        order = np.argsort(rows, kind="stable")
        r = rows[order]
        idx = np.arange(len(r))
        first = np.zeros(len(r), np.int64)  # position of the first example of each one's row
        first[1:] = np.where(r[1:] != r[:-1], idx[1:], 0)
        return order, idx - np.maximum.accumulate(first)

    def _fold_ratings(self, rows: np.ndarray, y: np.ndarray) -> None:
        if not len(rows):
            return
        S = self._S
        # the mean is order-free: sums per distinct row (cost of the batch, not of the table)
        hit, inv = np.unique(rows, return_inverse=True)
        cnt = np.bincount(inv).astype(np.float64)
        tot = np.bincount(inv, weights=y)
        old_n = S[hit, _NR]
        new_n = old_n + cnt
        S[hit, _RMEAN] = (S[hit, _RMEAN] * old_n + tot) / new_n
        S[hit, _NR] = new_n

    def _fold_sentiment(self, rows: np.ndarray, x: np.ndarray) -> None:
        S = self._S
        a_fast = 2.0 / (self.recent_comments + 1)
        a_slow = 2.0 / (self.slow_comments + 1)
        order, occ = self._rounds(rows)
        rows, x = rows[order], x[order]
        last = int(occ.max())
        for k in range(last + 1):
            if last == 0:  # every row once (the usual batch): no selection
                r, v = rows, x
            else:
                sel = occ == k
                r, v = rows[sel], x[sel]  # distinct rows: plain fancy indexing is safe
            t = S[r]  # one gather and one scatter per round; columns updated in place on the copy
            n = t[:, _NS] + 1.0
            t[:, _NS] = n
            t[:, _MEAN] += (v - t[:, _MEAN]) / n
            af = np.maximum(1.0 / n, a_fast)
            as_ = np.maximum(1.0 / n, a_slow)
            d = v - t[:, _SLOW]
            t[:, _SLOW] += as_ * d
            t[:, _VAR] = (1.0 - as_) * (t[:, _VAR] + as_ * d * d)
            t[:, _FAST] += af * (v - t[:, _FAST])
            # variance factors of fast, slow and their covariance for unit-variance iid comments
            t[:, _VF] = (1.0 - af) ** 2 * t[:, _VF] + af * af
            t[:, _VS] = (1.0 - as_) ** 2 * t[:, _VS] + as_ * as_
            t[:, _CV] = (1.0 - af) * (1.0 - as_) * t[:, _CV] + af * as_
            S[r] = t

    def forget(self, rows: np.ndarray) -> None:
        """Reset rows (expired or erased items; a reused row starts from nothing)."""
        rows = np.asarray(rows, np.int64)
        rows = rows[(rows >= 0) & (rows < self._n)]
        self._S[rows] = 0.0

    # ------------------------------------------------------------------ reading
    def columns(self, rows: np.ndarray) -> np.ndarray:
        """The exported columns (:data:`FEEDBACK_COLUMNS`) of ``rows`` as float64 ``[n, 10]``;
        rows never updated read as no comments and no ratings (all 0)."""
        rows = np.asarray(rows, np.int64)
        ok = (rows >= 0) & (rows < self._n)
        if ok.all():
            st = self._S[rows]
        else:
            st = np.zeros((len(rows), _NSTATE), np.float64)
            st[ok] = self._S[rows[ok]]
        out = np.empty((len(rows), len(FEEDBACK_COLUMNS)), np.float64)
        ns, nr = st[:, _NS], st[:, _NR]
        has = ns > 0
        out[:, 0], out[:, 1], out[:, 4] = st[:, _C], ns, nr
        out[:, 2] = np.where(has, st[:, _MEAN], 0.0)
        out[:, 3] = np.where(has, st[:, _FAST], 0.0)
        out[:, 5] = np.where(nr > 0, st[:, _RMEAN], 0.0)
        trend = st[:, _FAST] - st[:, _SLOW]
        factor = np.maximum(st[:, _VF] + st[:, _VS] - 2.0 * st[:, _CV], 0.0)
        se = np.sqrt(np.maximum(st[:, _VAR], self.sigma_min ** 2) * factor)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(se > 0, trend / np.where(se > 0, se, 1.0), 0.0)
        enough = ns >= self.min_comments
        out[:, 6] = np.where(enough, trend, 0.0)
        out[:, 7] = np.where(enough, z, 0.0)
        out[:, 8] = (enough & (trend <= -self.min_drop) & (z <= -self.z_min)).astype(np.float64)
        out[:, 9] = enough
        return out

    def export(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Tensors of a model update for item ``rows``: ``{"item_feedback": float32 [n, 10]}``,
        row ``j`` for ``rows[j]`` (columns :data:`FEEDBACK_COLUMNS`)."""
        return {FEEDBACK_TENSOR: np.ascontiguousarray(self.columns(rows), np.float32)}

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON-able meta and arrays (array name ``item_feedback_state``) for a checkpoint."""
        return ({"version": _STATE_VERSION, "params": self.get_params(), "rows": self._n},
                {"item_feedback_state": np.ascontiguousarray(self._S[: self._n])})

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> ItemFeedback:
        """Rebuild from :meth:`state` output."""
        if meta.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported item feedback state version {meta.get('version')!r}")
        fb = cls(**meta["params"])
        a = np.asarray(arrays["item_feedback_state"], np.float64)
        if a.ndim != 2 or a.shape[1] != _NSTATE or len(a) != int(meta["rows"]):
            raise ValueError(f"item_feedback_state has shape {a.shape}, expected ({meta['rows']}, {_NSTATE})")
        fb._grow(len(a))
        fb._S[: len(a)] = a
        return fb
