"""Approximate top-k for big catalogues: an inner-product index over the factor part, with a
threshold check that falls back to the exact scan.

A known user's score of item ``j`` (:func:`trainer.scoring.score_items`) is::

    score_j = pop_j + c · (q_j · u + b_j) + knn_j        c = w_mf · mf_gain / rating_span >= 0

``knn_j`` is non-zero only for the user's ≤ 50 candidates, and ``pop_j`` only depends on the item.
So the best items are among (a) the knn candidates, (b) the ``fetch`` best items by popularity
(serving keeps that order per version) and (c) the ``fetch`` best by the factor part
``[u, 1] · [q_j, b_j]`` — a maximum-inner-product search, answered by a faiss IVF index
(:class:`ItemIndex`). The union is scored exactly. Any item outside it scores at most
``pop_fetch + c · mf_fetch`` (the last popularity and factor values fetched; Fagin's threshold):
when the k-th best eligible score of the union reaches that bound, the answer is the exact top-k
up to what the index missed in (c); otherwise, or with fewer than ``k`` eligible items left after
the request's masks (seen, expired, blocked), the caller scans exactly.

The index holds item factors and biases only — popularity moves with every update, the factors
only for the rows an update touches — so a delta updates the touched rows in place (faiss
``remove_ids`` + ``add_with_ids``) instead of a rebuild. The index is shared by model versions; a
search may see rows of a newer version than the one answering, which only changes which rows are
proposed: every proposal is re-scored from the answering version's own arrays and rows past its
row count are dropped.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> q, b = rng.normal(size=(5000, 8)).astype(np.float32), np.zeros(5000, np.float32)
>>> idx = ItemIndex.build(q, b, nprobe=24, seed=0)  # 70 cells, 24 scanned per search
>>> u = rng.normal(size=8).astype(np.float32)
>>> exact = set(np.argsort(-(q @ u))[:10].tolist())
>>> rows, _ = idx.search(u, 50)
>>> len(exact & set(rows.tolist())) >= 9
True
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

__all__ = ["ItemIndex", "approximate_top_k", "recall_at_k"]


class ItemIndex:
    """A faiss ``IndexIVFFlat`` (inner product) over ``[q_j, b_j]`` with item rows as ids.

    Parameters
    ----------
    factors
        Item factor dimension.
    nlist
        Inverted lists (k-means cells); ``nprobe`` of them are scanned per search.
    nprobe
        Cells scanned per search: recall against the exact scan grows with it.
    """

    def __init__(self, factors: int, nlist: int, nprobe: int) -> None:
        import faiss

        if factors < 1 or nlist < 1 or nprobe < 1:
            raise ValueError(f"factors={factors!r}, nlist={nlist!r}, nprobe={nprobe!r}: each must be >= 1")
        self.factors, self.nlist, self.nprobe = int(factors), int(nlist), int(nprobe)
        self._quantizer = faiss.IndexFlatIP(self.factors + 1)
        self._index = faiss.IndexIVFFlat(self._quantizer, self.factors + 1, self.nlist, faiss.METRIC_INNER_PRODUCT)
        self._index.nprobe = min(self.nprobe, self.nlist)
        self._lock = threading.Lock()  # faiss does not allow a search during add/remove
        self.rows = 0  # highest row indexed + 1

    @staticmethod
    def _vectors(item_factors: np.ndarray, item_bias: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.hstack([item_factors, item_bias.reshape(-1, 1)]), np.float32)

    @classmethod
    def build(cls, item_factors: np.ndarray, item_bias: np.ndarray, *, nlist: int | None = None, nprobe: int | None = None,
              seed: int = 0) -> ItemIndex:
        """Train on a sample of the rows (at most 32 per cell; about sqrt(n) cells) and add every row."""
        import faiss

        n, f = item_factors.shape
        nlist = nlist or max(16, int(np.sqrt(n)))
        nprobe = nprobe or max(8, nlist // 16)
        idx = cls(f, nlist, nprobe)
        x = cls._vectors(item_factors, item_bias)
        rng = np.random.default_rng(seed)
        sample = x[rng.choice(n, 32 * nlist, replace=False)] if n > 32 * nlist else x
        idx._index.cp.seed = seed
        idx._index.cp.niter = 10
        idx._index.cp.min_points_per_centroid = 1  # no warning for a small sample: 32 per cell is enough here
        faiss.omp_set_num_threads(1)  # a replica's cores answer requests; training is a one-off
        idx._index.train(sample)
        idx._index.add_with_ids(x, np.arange(n, dtype=np.int64))
        idx.rows = n
        return idx

    def update(self, rows: np.ndarray, item_factors: np.ndarray, item_bias: np.ndarray) -> None:
        """Replace (or add) ``rows`` with new factors and biases."""
        rows = np.ascontiguousarray(rows, np.int64)
        if not len(rows):
            return
        x = self._vectors(item_factors, item_bias)
        with self._lock:
            self._index.remove_ids(rows)  # type: ignore[arg-type]  # faiss's SWIG wrapper takes an id array
            self._index.add_with_ids(x, rows)
            self.rows = max(self.rows, int(rows.max()) + 1)

    def search(self, user_vector: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, values)`` of the ``n`` best rows by ``u · q_j + b_j`` (approximately), best first."""
        y = np.ascontiguousarray(np.append(user_vector, 1.0).reshape(1, -1), np.float32)
        with self._lock:
            vals, rows = self._index.search(y, n)
        ok = rows[0] >= 0
        return rows[0][ok], vals[0][ok]


def approximate_top_k(*, k: int, fetch: int, pop_part: np.ndarray, popular: np.ndarray, index: ItemIndex,
                      item_factors: np.ndarray, item_bias: np.ndarray, user_vector: np.ndarray, c: float,
                      cand_rows: np.ndarray, cand_vals: np.ndarray, w_knn: float, excluded: np.ndarray,
                      bound_check: bool = True) -> tuple[np.ndarray, np.ndarray] | None:
    """``(rows, scores)`` of the top ``k`` (best first) from the union described in the module
    docstring, or None when the threshold check fails (``bound_check``) or fewer than ``k``
    eligible rows remain (the caller then scans exactly). ``excluded``: rows that must not be
    returned."""
    n = len(pop_part)
    parts = [popular[:fetch]]
    bound = float(pop_part[popular[min(fetch, n) - 1]]) if n else 0.0
    if c > 0:
        rows, vals = index.search(user_vector, fetch)
        rows = rows[rows < n]
        parts.append(rows)
        if len(rows) < fetch:
            return None
        bound += c * float(vals[-1])
    ok = cand_rows >= 0
    parts.append(cand_rows[ok])
    union = np.unique(np.concatenate(parts).astype(np.int64))
    if len(excluded):
        union = union[~np.isin(union, excluded)]
    if len(union) < k:
        return None
    scores = pop_part[union].copy()
    if c > 0:
        mf = item_factors[union] @ user_vector
        mf += item_bias[union]
        scores += c * mf
    if w_knn and ok.any():
        pos = np.searchsorted(union, cand_rows[ok])
        hit = (pos < len(union)) & (union[np.minimum(pos, len(union) - 1)] == cand_rows[ok])
        np.add.at(scores, pos[hit], cand_vals[ok][hit].astype(np.float64) * w_knn)
    top = np.argpartition(scores, len(scores) - k)[len(scores) - k:] if k < len(scores) else np.arange(len(scores))
    top = top[np.argsort(-scores[top], kind="stable")]
    if bound_check and scores[top[-1]] < bound:
        return None  # an item outside the union could still beat the k-th: not provably the top-k
    return union[top], scores[top]


def recall_at_k(approx: list[list[Any]], exact: list[list[Any]]) -> float:
    """Mean share of each exact top-k list found in the matching approximate list.

    Examples
    --------
    >>> recall_at_k([["a", "b"], ["c", "x"]], [["a", "b"], ["c", "d"]])
    0.75
    """
    if not exact:
        return float("nan")
    return float(np.mean([len(set(a) & set(e)) / max(len(e), 1) for a, e in zip(approx, exact, strict=True)]))


class VersionIndex:
    """What a :class:`~serving.model.ServingModel` holds: the shared :class:`ItemIndex`, ``fetch``,
    and how many answers came from the index vs. fell back to the exact scan."""

    __slots__ = ("index", "fetch", "answers", "fallbacks")

    def __init__(self, index: ItemIndex, fetch: int) -> None:
        self.index, self.fetch = index, fetch
        self.answers = self.fallbacks = 0  # approximate (unsynchronised counts: a statistic, not a ledger)

    def top_k(self, **kw: Any) -> tuple[np.ndarray, np.ndarray] | None:
        """:func:`approximate_top_k` with this index and ``fetch``; counts the outcome."""
        got = approximate_top_k(index=self.index, fetch=max(self.fetch, kw["k"]), **kw)
        if got is None:
            self.fallbacks += 1
        else:
            self.answers += 1
        return got


def index_for(base: VersionIndex | None, kind: str, items: Any, touched_ids: list[list[str]], min_items: int,
              fetch: int) -> VersionIndex | None:
    """The index of a new model version: built for a snapshot of at least ``min_items`` items
    (0 = never), carried over from ``base`` with the rows a delta touched updated in place; None
    below the threshold (exact top-k). ``items``: the version's item table (``index``, ``view``)."""
    n = items.n
    if min_items <= 0 or n < min_items:
        return None
    q, b = items.view("item_factors"), items.view("item_bias")
    if kind != "delta" or base is None:
        return VersionIndex(ItemIndex.build(q, b), fetch)
    rows = np.unique(np.fromiter((items.index[x] for ids in touched_ids for x in ids), np.int64))
    rows = rows[rows < n]
    base.index.update(rows, q[rows], b[rows])
    return base
