"""ItemFeedback: counts, means, the recent window, the falling flag, checkpoints, forgetting rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trainer.feedback import FEEDBACK_COLUMNS, FEEDBACK_TENSOR, ItemFeedback

COL = {name: j for j, name in enumerate(FEEDBACK_COLUMNS)}
RATING, CLICK, COMMENT = 0, 1, 2
YELP = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "yelp-sample" / "reviews.jsonl"


def comments(fb: ItemFeedback, rows, sentiment, batch: int = 1) -> None:
    rows, sentiment = np.asarray(rows), np.asarray(sentiment, float)
    for i in range(0, len(rows), batch):
        r = rows[i : i + batch]
        fb.update(r, np.full(len(r), COMMENT), np.full(len(r), np.nan), sentiment[i : i + batch])


def col(fb: ItemFeedback, row: int, name: str) -> float:
    return float(fb.export(np.array([row]))[FEEDBACK_TENSOR][0, COL[name]])


def test_counts_and_means_by_kind() -> None:
    fb = ItemFeedback()
    rows = np.array([0, 0, 1, 0, 1, 2, 0])
    kinds = np.array([RATING, COMMENT, COMMENT, CLICK, RATING, COMMENT, COMMENT])
    ratings = np.array([4.0, 2.0, np.nan, np.nan, 1.0, np.nan, np.nan])  # item 0's first comment carries a rating
    sent = np.array([np.nan, 2.5, 3.5, np.nan, np.nan, np.nan, 4.5])  # item 2's comment has no estimate
    fb.update(rows, kinds, ratings, sent)
    t = fb.export(np.array([0, 1, 2, 7]))[FEEDBACK_TENSOR]
    assert t.dtype == np.float32 and t.shape == (4, len(FEEDBACK_COLUMNS))
    assert t[:, COL["comments"]].tolist() == [2, 1, 1, 0]
    assert t[:, COL["comments_scored"]].tolist() == [2, 1, 0, 0]
    assert t[:, COL["ratings"]].tolist() == [2, 1, 0, 0]
    assert t[0, COL["rating_mean"]] == pytest.approx(3.0) and t[1, COL["rating_mean"]] == pytest.approx(1.0)
    assert t[0, COL["sentiment_mean"]] == pytest.approx(3.5) and t[1, COL["sentiment_mean"]] == pytest.approx(3.5)
    # nothing known: zeros (updates carry finite values), no trend, not falling
    assert t[2, COL["sentiment_mean"]] == 0 and t[3, COL["rating_mean"]] == 0 and t[3, COL["trend"]] == 0
    assert t[:, COL["falling"]].tolist() == [0, 0, 0, 0] and t[:, COL["trended"]].tolist() == [0, 0, 0, 0]
    assert np.isfinite(t).all()


def test_batching_does_not_change_the_result() -> None:
    rng = np.random.default_rng(3)
    rows = rng.integers(0, 5, 300)
    sent = rng.normal(3.5, 1.0, 300)
    one, many = ItemFeedback(), ItemFeedback()
    comments(one, rows, sent, batch=1)
    comments(many, rows, sent, batch=300)  # many comments of one item in the same batch
    np.testing.assert_allclose(one.columns(np.arange(5)), many.columns(np.arange(5)), rtol=1e-12, equal_nan=True)


def test_recent_window_follows_the_latest_comments_and_the_mean_keeps_all() -> None:
    fb = ItemFeedback(recent_comments=20)
    comments(fb, np.zeros(100, int), np.r_[np.full(60, 5.0), np.full(40, 1.0)], batch=7)
    assert col(fb, 0, "sentiment_mean") == pytest.approx((60 * 5 + 40) / 100)
    # 40 comments at 1 after 60 at 5: an EWMA of span 20 keeps (1 - 2/21)^40 ~ 2 % of the old level
    assert col(fb, 0, "sentiment_recent") == pytest.approx(1.0 + 4.0 * (19 / 21) ** 40, rel=1e-5)
    # before the window fills, the recent value is the plain mean (no bias towards 0)
    fb2 = ItemFeedback(recent_comments=20)
    comments(fb2, [3, 3, 3], [4.0, 2.0, 3.0])
    assert col(fb2, 3, "sentiment_recent") == pytest.approx(3.0)


def test_an_item_whose_comments_turn_negative_is_flagged_and_a_stable_one_is_not() -> None:
    rng = np.random.default_rng(7)
    fb = ItemFeedback()
    n = 300
    falling = np.r_[rng.normal(4.3, 0.6, 200), rng.normal(2.0, 0.6, 100)]
    stable = rng.normal(4.3, 0.6, n)
    rows = np.tile([0, 1], n)
    sent = np.column_stack([falling, stable]).ravel()
    flagged_at, lowest, stable_trends = None, 0.0, []
    for i in range(0, 2 * n, 10):
        comments(fb, rows[i : i + 10], sent[i : i + 10], batch=10)
        if flagged_at is None and col(fb, 0, "falling"):
            flagged_at = i // 2
        lowest = min(lowest, col(fb, 0, "trend"))
        if col(fb, 1, "trended"):
            stable_trends.append(col(fb, 1, "trend"))
        assert not col(fb, 1, "falling"), f"the stable item was flagged after {i // 2} comments"
    assert flagged_at is not None and 200 <= flagged_at <= 215, flagged_at
    assert lowest < -1.5  # most of the 2.3-star fall shows
    assert len(stable_trends) > 50 and np.max(np.abs(stable_trends)) < 0.5


def test_few_comments_never_flag() -> None:
    fb = ItemFeedback(min_comments=10)
    comments(fb, np.zeros(9, int), [5, 5, 5, 5, 5, 5, 5, 1, 1])
    assert not col(fb, 0, "trended") and col(fb, 0, "trend") == 0 and not col(fb, 0, "falling")
    comments(fb, [0], [1.0])
    assert col(fb, 0, "trended") and col(fb, 0, "trend") == 0  # both averages are still the plain mean
    comments(fb, [0, 0], [1.0, 1.0])
    assert col(fb, 0, "trend") < 0


@pytest.mark.skipif(not YELP.exists(), reason="the yelp sample sits beside the clone in development only")
def test_noisy_real_reviews_in_random_order_flag_nothing() -> None:
    """Star ratings of real reviews (noisier and more skewed than sentiment estimates), each item's
    reviews shuffled so nothing changes over time: no item is ever flagged."""
    reviews = [json.loads(line) for line in YELP.open()]
    ids: dict[str, int] = {}
    rows = np.array([ids.setdefault(r["item_id"], len(ids)) for r in reviews])
    stars = np.array([r["rating"] for r in reviews], float)
    for seed in range(5):
        perm = np.random.default_rng(seed).permutation(len(rows))
        fb = ItemFeedback()
        for i in range(0, len(perm), 25):
            p = perm[i : i + 25]
            comments(fb, rows[p], stars[p], batch=25)
            t = fb.export(np.unique(rows[p]))[FEEDBACK_TENSOR]
            assert not t[:, COL["falling"]].any(), f"seed {seed}: flagged after {i} reviews"
        # the same reviews with the second half of one busy item's reviews a star and a half worse: flagged
        busy = np.bincount(rows).argmax()
        worse = stars.copy()
        mine = np.flatnonzero(rows[perm] == busy)
        worse[perm[mine[len(mine) // 2 :]]] = np.clip(worse[perm[mine[len(mine) // 2 :]]] - 1.5, 1, 5)
        fb = ItemFeedback()
        comments(fb, rows[perm[: mine[len(mine) // 2 + 40]]], worse[perm[: mine[len(mine) // 2 + 40]]], batch=25)
        assert col(fb, int(busy), "falling"), f"seed {seed}"


def test_state_round_trip_and_continuing_learns_the_same() -> None:
    rng = np.random.default_rng(1)
    rows, sent = rng.integers(0, 40, 500), rng.normal(3.0, 1.0, 500)
    ratings = np.where(rng.random(500) < 0.3, rng.integers(1, 6, 500), np.nan)
    a = ItemFeedback(recent_comments=10, slow_comments=50)
    a.update(rows[:300], np.full(300, COMMENT), ratings[:300], sent[:300])
    meta, arrays = a.state()
    meta = json.loads(json.dumps(meta))
    b = ItemFeedback.from_state(meta, {k: v.copy() for k, v in arrays.items()})
    assert b.get_params() == a.get_params()
    for m in (a, b):
        m.update(rows[300:], np.full(200, COMMENT), ratings[300:], sent[300:])
    np.testing.assert_array_equal(a.columns(np.arange(45)), b.columns(np.arange(45)))
    with pytest.raises(ValueError, match="version"):
        ItemFeedback.from_state({**meta, "version": 99}, arrays)


def test_forget_resets_a_reused_row() -> None:
    fb = ItemFeedback()
    comments(fb, np.zeros(30, int), np.full(30, 1.0))
    comments(fb, np.ones(30, int), np.full(30, 4.0))
    fb.update(np.array([0]), np.array([RATING]), np.array([1.0]), np.array([np.nan]))
    fb.forget(np.array([0, 999]))  # rows never used are ignored
    assert col(fb, 0, "comments") == 0 and col(fb, 0, "ratings") == 0 and col(fb, 0, "comments_scored") == 0
    assert col(fb, 1, "comments") == 30
    comments(fb, [0], [5.0])  # a new item on the reused row starts from its own comments
    assert col(fb, 0, "sentiment_mean") == 5.0 and col(fb, 0, "comments") == 1


@pytest.mark.parametrize("kw, name", [({"recent_comments": 0}, "recent_comments"), ({"slow_comments": 5}, "slow_comments"),
                                      ({"min_drop": -1.0}, "min_drop"), ({"z_min": float("nan")}, "z_min")])
def test_bad_parameters_name_the_parameter(kw: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        ItemFeedback(**kw)


def test_bad_update_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="one value per example"):
        ItemFeedback().update(np.array([0, 1]), np.array([COMMENT]), np.array([np.nan]), np.array([3.0]))
    with pytest.raises(ValueError, match="item_rows"):
        ItemFeedback().update(np.array([-1]), np.array([COMMENT]), np.array([np.nan]), np.array([3.0]))


def test_bench_feedback_reports_false_alarms_and_delays(tmp_path: Path) -> None:
    """``reco bench feedback`` on a small reviews file: stable items are never flagged, a 2-point
    drop is caught, and the magnitude-only anchor is reported beside it."""
    from trainer.bench.feedback import run_bench

    rng = np.random.default_rng(0)
    lines = [json.dumps({"user_id": f"u{j}", "item_id": f"i{j % 3}", "rating": float(rng.choice([2, 3, 4, 4, 5, 5])),
                         "time": 1_600_000_000 + j, "text": "fine"}) for j in range(300)]
    path = tmp_path / "reviews.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = run_bench(str(path), trials=2)
    assert out["reviews"] == 300 and out["items"] == 3 and out["params"] == ItemFeedback().get_params()
    assert out["stars"]["flagged_real_order"] == 0 and out["stars"]["flagged_shuffled"] == 0
    assert out["stars"]["drops"]["2"]["caught"] >= 0.8
    assert set(out["anchor_no_z"]) == set(out["stars"]) and out["update_us_per_1000"]["ratings"] > 0
    with pytest.raises(ValueError, match="trials"):
        run_bench(str(path), trials=0)
