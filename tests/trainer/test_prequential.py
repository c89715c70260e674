"""Prequential metrics on tiny hand-computed cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from streamproc.examples import KIND_CLICK, KIND_COMMENT, KIND_RATING, ExampleBatch
from trainer.model import RANK_CANDIDATES
from trainer.prequential import Prequential, click_ranks


def batch(kinds: list[int], targets: list[float]) -> ExampleBatch:
    n = len(kinds)
    return ExampleBatch.build(event_ids=[""] * n, user_ids=["u"] * n, item_ids=["i"] * n, kinds=kinds, targets=targets,
                              event_times=[0.0] * n, published=[0.0] * n, processed=[0.0] * n)


def rank_score(rank: int) -> float:
    return 1.0 - rank / RANK_CANDIDATES


def test_empty_metrics_are_none() -> None:
    m = Prequential().get()
    assert m["rmse"] is None and m["ndcg_at_10"] is None and m["rmse_recent"] is None and m["n_ratings"] == 0


def test_rating_errors_running_and_recent() -> None:
    p = Prequential(window=2)
    # errors 1, -2, 0 (the unrated comment and the click are not rating errors)
    p.update_batch(batch([KIND_RATING, KIND_COMMENT, KIND_COMMENT, KIND_CLICK], [4.0, 3.0, math.nan, math.nan]),
                   np.array([5.0, 1.0, 4.0, rank_score(0)]))
    p.update_batch(batch([KIND_RATING], [2.0]), np.array([2.0]))
    m = p.get()
    assert m["rmse"] == pytest.approx(math.sqrt(5 / 3))
    assert m["mae"] == pytest.approx(1.0)
    assert m["rmse_recent"] == pytest.approx(math.sqrt(4 / 2))  # last two: -2, 0
    assert m["mae_recent"] == pytest.approx(1.0)
    assert m["n_ratings"] == 3 and m["n_clicks"] == 1


def test_click_hit_rate_and_ndcg() -> None:
    p = Prequential(window=2)
    scores = np.array([rank_score(0), rank_score(2), rank_score(9), rank_score(10), rank_score(60)])
    assert click_ranks(scores).tolist() == [0, 2, 9, 10, 60]
    p.update_batch(batch([KIND_CLICK] * 5, [math.nan] * 5), scores)
    m = p.get()
    assert m["hit_rate_at_10"] == pytest.approx(3 / 5)
    assert m["ndcg_at_10"] == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(11)) / 5)
    assert m["hit_rate_at_10_recent"] == 0.0 and m["ndcg_at_10_recent"] == 0.0


def test_state_round_trip() -> None:
    p = Prequential(window=3)
    p.update_batch(batch([KIND_RATING] * 4, [1.0, 2.0, 3.0, 4.0]), np.array([2.0, 2.0, 2.0, 2.0]))
    q = Prequential.from_state(json.loads(json.dumps(p.state())))
    assert q.get() == p.get()
    for x in (p, q):
        x.update_batch(batch([KIND_RATING], [5.0]), np.array([1.0]))
    assert q.get() == p.get()
