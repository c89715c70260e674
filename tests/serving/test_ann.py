"""Approximate top-k (serving.ann): recall against the exact scan, masks, deltas, fallback."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from serving.ann import ItemIndex, approximate_top_k, recall_at_k
from serving.bench import SyntheticModel
from serving.model import ServingModel
from trainer.updates import ModelUpdate

RANKING = {"knn": 1.0, "popularity": 0.2, "mf": 0.5, "rating_span": 4.5}


def _models(items: int = 20_000, users: int = 300) -> tuple[SyntheticModel, ServingModel, ServingModel]:
    syn = SyntheticModel(users, items, 16, seed=4, candidates=50, ranking=RANKING)
    snap = syn.snapshot(max_bytes=1 << 40)
    return syn, ServingModel.build(None, snap), ServingModel.build(None, snap, ann_min_items=1_000, ann_fetch=200)


def _top(m: ServingModel, user: str, k: int = 10, **kw) -> list[str]:
    return [i for i, _ in m.recommend(user, k, **kw).items]


def test_recall_at_10_against_exact_is_at_least_095() -> None:
    _, exact, approx = _models()
    assert approx._ann is not None and exact._ann is None
    users = [f"u{n}" for n in range(300)]
    r = recall_at_k([_top(approx, u) for u in users], [_top(exact, u) for u in users])
    assert r >= 0.95


def test_scores_are_the_exact_scores_of_the_returned_items() -> None:
    _, exact, approx = _models(5_000, 50)
    for u in ("u1", "u7", "u30"):
        got = approx.recommend(u, 10).items
        want = dict(zip([i for i, _ in got], exact.score(u, [i for i, _ in got]), strict=True))
        assert all(abs(s - want[i]) < 1e-5 for i, s in got)


def test_below_the_threshold_the_scan_is_exact() -> None:
    syn = SyntheticModel(20, 500, 8, seed=1, candidates=5, ranking=RANKING)
    assert ServingModel.build(None, syn.snapshot(max_bytes=1 << 40), ann_min_items=1_000)._ann is None


def test_seen_items_never_come_back_and_k_is_kept() -> None:
    syn, exact, approx = _models(5_000, 50)
    first = _top(approx, "u3", 10)
    d = syn.delta(rows=0, published=[["u3", i, 0.0] for i in first])
    a2, e2 = ServingModel.build(approx, [d], ann_min_items=1_000), ServingModel.build(exact, [d])
    again = _top(a2, "u3", 10)
    assert len(again) == 10 and not set(again) & set(first)
    assert recall_at_k([again], [_top(e2, "u3", 10)]) >= 0.9


def test_masks_removing_the_whole_union_fall_back_to_exact() -> None:
    rng = np.random.default_rng(0)
    q, b = rng.normal(size=(3_000, 8)).astype(np.float32), np.zeros(3_000, np.float32)
    idx = ItemIndex.build(q, b, seed=0)
    pop = np.zeros(3_000)
    popular = np.arange(3_000)
    u = rng.normal(size=8).astype(np.float32)
    args = dict(k=10, fetch=50, pop_part=pop, popular=popular, index=idx, item_factors=q, item_bias=b, user_vector=u, c=0.1,
                cand_rows=np.array([-1]), cand_vals=np.zeros(1, np.float32), w_knn=1.0)
    assert approximate_top_k(**args, excluded=np.empty(0, np.int64)) is not None
    assert approximate_top_k(**args, excluded=np.arange(3_000)) is None  # nothing eligible left in the union


def test_a_delta_moves_an_item_to_the_top_through_the_index() -> None:
    syn, _, approx = _models(5_000, 50)
    u = approx.user_vector("u2")
    row = 4_321
    syn.item_factors[row] = u / np.linalg.norm(u) * 50  # far above every other item for u2
    d = ModelUpdate({"version": syn.version + 1, "kind": "delta", "base_version": syn.version, "item_ids": [f"i{row}"],
                     "user_ids": [], "published": []},
                    {"item_factors": syn.item_factors[[row]], "item_bias": syn.item_bias[[row]]})
    m2 = ServingModel.build(approx, [d], ann_min_items=1_000)
    assert m2._ann is approx._ann  # updated in place, not rebuilt
    assert _top(m2, "u2", 1) == [f"i{row}"]


@pytest.mark.skipif("blocked" not in inspect.signature(ServingModel.recommend).parameters, reason="request-time masks not in this tree")
def test_blocked_items_are_honoured_on_the_approximate_path() -> None:
    _, exact, approx = _models(5_000, 50)
    first = _top(approx, "u5", 10)
    rows = approx.item_rows(first)
    got = _top(approx, "u5", 10, blocked=rows)
    assert len(got) == 10 and not set(got) & set(first)
    assert recall_at_k([got], [_top(exact, "u5", 10, blocked=rows)]) >= 0.9
