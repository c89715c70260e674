"""Prequential metrics on tiny hand-computed cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from safetensors.numpy import load, save

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
    meta, arrays = p.state()
    q = Prequential.from_state(json.loads(json.dumps(meta)), load(save(arrays)))
    assert q.get() == p.get()
    for x in (p, q):
        x.update_batch(batch([KIND_RATING], [5.0]), np.array([1.0]))
    assert q.get() == p.get()


def test_dict_state_of_older_checkpoints_still_loads() -> None:
    p = Prequential(window=3)
    p.update_batch(batch([KIND_RATING] * 4, [1.0, 2.0, 3.0, 4.0]), np.array([2.0, 2.0, 2.0, 4.0]))
    meta, arrays = p.state()
    # the layout state() had before it returned (meta, arrays): the windows' values inline
    old = {**meta, "win": {k: {**w, "buf": arrays[f"win_{k}"].tolist()} for k, w in meta["win"].items()}}
    old = json.loads(json.dumps(old))
    # the second: as a checkpoint of format 1 restores it (trainer.checkpoint unwraps {"form": "dict", "meta": ...})
    for q in (Prequential.from_state(old), Prequential.from_state(old, {})):
        assert q.get() == p.get()
        q.update_batch(batch([KIND_RATING], [5.0]), np.array([1.0]))
    p.update_batch(batch([KIND_RATING], [5.0]), np.array([1.0]))
    assert q.get() == p.get()


def test_full_catalogue_ranks_of_sampled_positive_feedback_drive_hit_rate_and_ndcg() -> None:
    from trainer.model import HybridMF

    m = HybridMF(rank_sample=1.0, seed=1)
    p = Prequential(window=50)
    for step in range(70):  # user u walks items u, u+1, u+2, ... (mod 40): a sequence co-occurrence learns
        users = [f"u{u}" for u in range(30)]
        items = [f"a{(u + step) % 40}" for u in range(30)]
        kinds = [KIND_CLICK if (u + step) % 3 == 0 else KIND_RATING for u in range(30)]
        targets = [float("nan") if k == KIND_CLICK else (5.0 if (u + step) % 4 else 1.0) for u, k in enumerate(kinds)]
        b = ExampleBatch.build(event_ids=[""] * 30, user_ids=users, item_ids=items, kinds=kinds, targets=targets,
                               event_times=[0.0] * 30, published=[0.0] * 30, processed=[0.0] * 30)
        preds = m.learn_batch(b)
        ranks = m.last_ranks
        positive = (np.array(kinds) == KIND_CLICK) | (np.array(targets) >= 4.0)
        assert np.isnan(ranks[~positive]).all()  # only positive feedback is ranked
        p.update_batch(b, preds, ranks)
    got = p.get()
    assert got["n_ranked"] > 500 and got["n_clicks"] == 700
    # the first 40 steps meet new items (misses); after that the next item is predictable
    assert got["hit_rate_at_10_recent"] > 0.8 and got["hit_rate_at_10"] > 0.3
    assert 0 < got["ndcg_at_10"] <= got["hit_rate_at_10"]
    assert p.state()[0]["n_ranked"] == got["n_ranked"] and Prequential.from_state(*p.state()).get() == got


def test_a_sampled_live_ranking_stays_within_its_budget_and_a_full_one_ranks_every_positive(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ranking scores every item: the live sample (``rank_sample`` < 1) earns a budget per event, so
    a large catalogue ranks fewer events; a full evaluation (1.0) ranks them all."""
    import trainer.model as model
    from trainer.model import HybridMF

    monkeypatch.setattr(model, "_GAIN_TOKEN_ITEMS", 1)  # one token per item: 40 items cost 40 tokens a ranking

    def ranked(rank_sample: float) -> int:
        m = HybridMF(rank_sample=rank_sample, seed=1)
        n = 0
        for step in range(40):
            users = [f"u{u}" for u in range(50)]
            items = [f"a{(u + step) % 40}" for u in range(50)]
            b = ExampleBatch.build(event_ids=[""] * 50, user_ids=users, item_ids=items, kinds=[KIND_CLICK] * 50,
                                   targets=[float("nan")] * 50, event_times=[0.0] * 50, published=[0.0] * 50, processed=[0.0] * 50)
            m.learn_batch(b)
            n += int(np.count_nonzero(~np.isnan(m.last_ranks)))
        return n

    full, sampled = ranked(1.0), ranked(0.9)
    # 2,000 events earn 2000/64 = 31 tokens on top of the 64 a model starts with: 2 rankings of 40
    assert full > 1000 and 1 <= sampled <= 3
