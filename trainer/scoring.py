"""The one ranking function: what serving ranks by and what ``reco bench quality`` measures.

A user's score of item ``j`` blends three parts, each scaled to about [0, 1] so the weights mean
the same on any dataset::

    score(u, j) = w_knn · knn(u, j)                            (sparse: the user's candidates)
                + w_pop · pop(j) / max pop                     (recency-decayed popularity)
                + w_mf  · (p_u · q_j + b_j) / rating_span      (the factor model)

``knn`` is the sequential co-occurrence score of :mod:`trainer.cooc` (only the user's
``n_candidates`` best items are non-zero, the strongest at most 1 — less for users with few
events; disliked neighbourhoods are negative), ``pop`` the interaction count decayed by the number
of events since (half-life ``popularity_half_life_events``: a rate-free clock, the same on a
replayed decade and a live hour), exported as ``item_log_popularity`` = log(pop) moved to clock 0,
so rows exported at different times stay comparable (``pop / max pop = exp(lp - max lp)``).
A user without a row gets the popularity part alone.

The trainer writes the weights into every model update (header ``ranking``), so a serving replica
ranks with exactly the weights the trainer was benchmarked with.

Examples
--------
>>> import numpy as np
>>> w = RankWeights(knn=1.0, popularity=0.2, mf=0.0)
>>> s = score_items(w, log_popularity=np.log(np.array([10.0, 1.0, 5.0], np.float32)),
...                 cand_rows=np.array([1, -1]), cand_vals=np.array([1.0, 0.0], np.float32))
>>> [round(float(x), 3) for x in s]
[0.2, 1.02, 0.1]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["RankWeights", "score_items", "popularity_part", "log_popularity", "LOG_POP_NONE"]

LOG_POP_NONE = -1e9  # log popularity of an item with no interaction (finite: updates reject inf)


def log_popularity(pop: np.ndarray, stamp: np.ndarray, tau: float | np.ndarray) -> np.ndarray:
    """``log(pop) + stamp / tau``: a count decayed as of ``stamp`` (a clock counting events, with
    time constant ``tau`` events), moved to clock 0; float32. Comparable across rows and updates.
    ``pop`` may be 2-d, one column per time constant in ``tau``."""
    pop = np.asarray(pop, np.float64)
    st = np.asarray(stamp, np.float64)
    if pop.ndim == 2:
        st = st[:, None]
    with np.errstate(divide="ignore"):
        lp = np.log(pop) + st / tau
    return np.where(pop > 0, lp, LOG_POP_NONE).astype(np.float32)


@dataclass(frozen=True)
class RankWeights:
    """Blend weights of :func:`score_items` (see the module docstring); ``rating_span`` scales
    the factor part (``rating_max - rating_min``)."""

    knn: float = 1.0
    popularity: float = 0.2
    mf: float = 0.0
    rating_span: float = 4.5
    horizon: float = 0.0  # column of a 2-d item_log_popularity (one per popularity half-life) served

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> RankWeights:
        """From a model-update header's ``ranking`` (unknown keys ignored, missing = default)."""
        if not isinstance(d, dict):
            return cls()
        known = {k: float(v) for k, v in d.items() if k in cls.__dataclass_fields__ and isinstance(v, (int, float))}
        return cls(**known)


def popularity_part(w: RankWeights, log_popularity: np.ndarray, lp_max: float | None = None) -> np.ndarray:
    """The user-independent part of :func:`score_items`: ``w_pop · pop / max pop`` (float64)."""
    n = len(log_popularity)
    if not (w.popularity and n):
        return np.zeros(n)
    if log_popularity.ndim == 2:  # one column per half-life: the header names the one served
        log_popularity = log_popularity[:, min(max(int(w.horizon), 0), log_popularity.shape[1] - 1)]
        lp_max = None
    if lp_max is None:
        lp_max = float(log_popularity.max())
    part = np.exp(log_popularity.astype(np.float64) - lp_max)
    part *= w.popularity
    return part


def score_items(w: RankWeights, *, log_popularity: np.ndarray | None = None, lp_max: float | None = None, pop_part: np.ndarray | None = None,
                item_factors: np.ndarray | None = None, item_bias: np.ndarray | None = None,
                user_vector: np.ndarray | None = None, cand_rows: np.ndarray | None = None,
                cand_vals: np.ndarray | None = None, mf_gain: float = 1.0) -> np.ndarray:
    """Scores of every item row (float64), higher is better.

    ``log_popularity``/``item_factors``/``item_bias`` are per item row (``lp_max``: its maximum,
    if already known; or ``pop_part``, :func:`popularity_part` computed once per model version);
    ``cand_rows`` (−1 = padding)
    and ``cand_vals`` are the user's sparse neighbourhood scores; both and ``user_vector`` are None
    for a user without a row (then only popularity counts); ``mf_gain`` scales the factor part for
    this user (the trainer learns it per profile length: young profiles' factors are noise on some
    streams).
    """
    if pop_part is not None:
        scores = pop_part.copy()
    elif log_popularity is not None:
        scores = popularity_part(w, log_popularity, lp_max)
    else:
        raise ValueError("score_items: give log_popularity or pop_part")
    if w.mf and mf_gain and item_factors is not None and user_vector is not None:
        mf = item_factors @ user_vector
        if item_bias is not None:
            mf = mf + item_bias
        scores += mf * (w.mf * mf_gain / w.rating_span)
    if w.knn and cand_rows is not None and cand_vals is not None:
        ok = cand_rows >= 0
        scores[cand_rows[ok]] += cand_vals[ok].astype(np.float64) * w.knn
    return scores
