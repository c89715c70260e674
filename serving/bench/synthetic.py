"""A random factor model that emits snapshots and chained deltas as the trainer does: the model of
``reco bench serving`` and ``reco bench scale``, and the update generator of the serving tests.

Examples
--------
>>> m = SyntheticModel(n_users=3, n_items=5, factors=2)
>>> [u.header.kind for u in m.snapshot(max_bytes=10_000)]
['snapshot']
>>> d = m.delta(rows=2)
>>> d.header.version, d.header.base_version, len(d.header.item_ids)
(2, 1, 2)
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from trainer.updates import ModelUpdate

__all__ = ["SyntheticModel"]


class SyntheticModel:
    """A random factor model that emits snapshots and chained deltas (the trainer's contract).

    Parameters
    ----------
    n_users, n_items, factors
        Table sizes.
    seed
        Seed of every random draw.
    """

    def __init__(self, n_users: int = 600, n_items: int = 9000, factors: int = 32, seed: int = 0, *,
                 candidates: int = 0, ranking: dict[str, float] | None = None) -> None:
        self.n_users, self.n_items, self.factors, self.seed = n_users, n_items, factors, seed
        # candidates > 0: users carry that many sparse neighbourhood scores and updates carry the
        # ranking blend (the trainer's HybridMF export); 0: the plain factor model
        self.candidates, self.ranking = candidates, ranking
        self._rng = np.random.default_rng(seed)
        r = self._rng
        self.user_ids = [f"u{i}" for i in range(n_users)]
        self.item_ids = [f"i{i}" for i in range(n_items)]
        self.user_factors = (r.normal(size=(n_users, factors)) * 0.3).astype(np.float32)
        self.user_bias = (r.normal(size=n_users) * 0.1).astype(np.float32)
        self.item_factors = (r.normal(size=(n_items, factors)) * 0.3).astype(np.float32)
        self.item_bias = (r.normal(size=n_items) * 0.1).astype(np.float32)
        self.item_popularity = np.sort(r.exponential(size=n_items).astype(np.float32))[::-1].copy()
        self.version = 0
        self.global_mean = 3.5
        self.item_log_popularity = np.log(self.item_popularity + 1e-3).astype(np.float32)
        self.user_candidates = [list(r.choice(n_items, min(candidates, n_items), replace=False)) for _ in range(n_users)]
        self.user_candidate_scores = np.sort(r.random((n_users, candidates)).astype(np.float32), axis=1)[:, ::-1].copy()

    def _blend(self, header: dict[str, Any], tensors: dict[str, np.ndarray], ui: np.ndarray, ii: np.ndarray) -> None:
        if not self.candidates:
            return
        header["ranking"] = self.ranking or {"knn": 1.0, "popularity": 0.2, "mf": 0.0, "rating_span": 4.5}
        # the trainer's form (trainer.updates): int32 rows into the ids this message references
        rows = np.array([self.user_candidates[u] for u in ui.tolist()], np.int64).reshape(len(ui), self.candidates)
        used, local = np.unique(rows, return_inverse=True)
        header["candidate_item_ids"] = [self.item_ids[c] for c in used.tolist()]
        tensors["user_candidates"] = local.reshape(rows.shape).astype(np.int32)
        tensors["user_candidate_scores"] = self.user_candidate_scores[ui]
        tensors["item_log_popularity"] = self.item_log_popularity[ii]

    def snapshot(self, *, max_bytes: int = 1_000_000, published: list[list[Any]] | None = None) -> list[ModelUpdate]:
        """The whole model as a new version, chunked by rows so each message fits ``max_bytes``."""
        self.version += 1
        row_bytes = 4 * (self.factors + 2) + 16
        per_chunk = max(1, int(max_bytes * 0.8) // row_bytes)
        rows = [("user", i) for i in range(self.n_users)] + [("item", i) for i in range(self.n_items)]
        parts = [rows[s : s + per_chunk] for s in range(0, len(rows), per_chunk)]
        out = []
        for c, part in enumerate(parts):
            ui = np.array([i for t, i in part if t == "user"], np.int64)
            ii = np.array([i for t, i in part if t == "item"], np.int64)
            header = {"version": self.version, "kind": "snapshot", "chunk": c, "chunks": len(parts),
                      "global_mean": self.global_mean, "user_ids": [self.user_ids[i] for i in ui],
                      "item_ids": [self.item_ids[i] for i in ii], "published": (published or []) if c == 0 else [],
                      "created": time.time()}
            tensors = {"user_factors": self.user_factors[ui], "user_bias": self.user_bias[ui],
                       "item_factors": self.item_factors[ii], "item_bias": self.item_bias[ii],
                       "item_popularity": self.item_popularity[ii]}
            self._blend(header, tensors, ui, ii)
            out.append(ModelUpdate(header, tensors))
        return out

    def delta(self, rows: int = 200, *, published: list[list[Any]] | None = None, new_items: int = 0) -> ModelUpdate:
        """A delta touching ``rows`` random item rows and ``rows // 10`` user rows (+ new items)."""
        r = self._rng
        for _ in range(new_items):
            self.item_ids.append(f"i{len(self.item_ids)}")
        if new_items:
            self.item_factors = np.vstack([self.item_factors, (r.normal(size=(new_items, self.factors)) * 0.3).astype(np.float32)])
            self.item_bias = np.concatenate([self.item_bias, np.zeros(new_items, np.float32)])
            self.item_popularity = np.concatenate([self.item_popularity, np.zeros(new_items, np.float32)])
            self.item_log_popularity = np.concatenate([self.item_log_popularity, np.full(new_items, -1e9, np.float32)])
            self.n_items += new_items
        ii = np.unique(np.concatenate([r.choice(self.n_items, min(rows, self.n_items), replace=False),
                                       np.arange(self.n_items - new_items, self.n_items)]))
        ui = np.unique(r.choice(self.n_users, max(1, min(rows // 10, self.n_users)), replace=False))
        self.item_factors[ii] += (r.normal(size=(len(ii), self.factors)) * 0.05).astype(np.float32)
        self.user_factors[ui] += (r.normal(size=(len(ui), self.factors)) * 0.05).astype(np.float32)
        self.version += 1
        now = time.time()
        header = {"version": self.version, "kind": "delta", "base_version": self.version - 1, "global_mean": self.global_mean,
                  "user_ids": [self.user_ids[i] for i in ui], "item_ids": [self.item_ids[i] for i in ii],
                  "published": published if published is not None else [[self.user_ids[i], self.item_ids[ii[0]], now] for i in ui[:5]],
                  "newest_published": now, "created": now}
        tensors = {"user_factors": self.user_factors[ui], "user_bias": self.user_bias[ui],
                   "item_factors": self.item_factors[ii], "item_bias": self.item_bias[ii]}
        self._blend(header, tensors, ui, ii)
        return ModelUpdate(header, tensors)
