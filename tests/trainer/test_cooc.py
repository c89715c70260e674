"""Sequential co-occurrence: neighbours, signed feedback, pruning, state; and its use in HybridMF."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load, save

from streamproc.examples import KIND_CLICK, KIND_COMMENT
from trainer.cooc import SequentialKNN
from trainer.model import HybridMF
from trainer.scoring import score_items


def _learn(knn: SequentialKNN, events: list[tuple[int, int, float]], n_users: int = 10, n_items: int = 10) -> None:
    u, i, w = zip(*events, strict=True)
    knn.learn(np.array(u, np.int32), np.array(i, np.int32), np.array(w, np.float32), n_users=n_users, n_items=n_items)


def _cands(knn: SequentialKNN, user: int, n_items: int = 10) -> dict[int, float]:
    rows, vals = knn.candidates(np.array([user], np.int32), n_items=n_items)
    return {int(r): float(v) for r, v in zip(rows[0], vals[0], strict=True) if r >= 0}


def test_items_that_follow_each_other_become_neighbours_in_order_of_strength() -> None:
    knn = SequentialKNN(window=3, decay=1.0, pair_decay=1.0, alpha=0.0, beta=0.0, confident=1)
    # users 0-2 go 1 -> 2; user 0 also 1 -> 3; user 5 has just seen item 1
    _learn(knn, [(0, 1, 1), (0, 2, 1), (1, 1, 1), (1, 2, 1), (2, 1, 1), (2, 2, 1), (3, 1, 1), (3, 3, 1), (5, 1, 1)])
    c = _cands(knn, 5)
    assert list(c)[:2] == [2, 3] and c[2] > c[3] > 0
    assert 1 not in c  # the user's own items are never candidates
    assert max(c.values()) == pytest.approx(1.0)  # the strongest is scaled to 1 (confident after 1 event)


def test_pairs_form_only_inside_the_window() -> None:
    knn = SequentialKNN(window=2, confident=1)
    _learn(knn, [(0, 1, 1), (0, 2, 1), (0, 3, 1), (0, 4, 1), (1, 1, 1)])
    assert set(_cands(knn, 1)) == {2, 3}  # 1 met 2 and 3; 4 came after 1 left the window
    assert knn.n_pairs == 5  # {1,2}, {1,3}, {2,3}, {2,4}, {3,4}


def test_a_disliked_item_pushes_its_neighbours_down() -> None:
    base = [(u, 1, 1.0) for u in range(4)] + [(u, 2, 1.0) for u in range(4)]  # 1 and 2 co-liked
    liked, disliked = SequentialKNN(confident=1), SequentialKNN(confident=1)
    _learn(liked, base + [(7, 1, 1.0)])
    _learn(disliked, base + [(7, 1, -1.0)])
    assert _cands(liked, 7)[2] > 0 > _cands(disliked, 7)[2]


def test_young_profiles_weigh_less() -> None:
    knn = SequentialKNN(confident=4)
    _learn(knn, [(0, 1, 1), (0, 2, 1), (0, 3, 1), (1, 1, 1)])
    assert max(_cands(knn, 1).values()) == pytest.approx(0.25)


def test_prune_drops_pairs_of_dead_items_and_the_weakest() -> None:
    knn = SequentialKNN(window=5, confident=1)
    _learn(knn, [(0, 1, 1), (0, 2, 1), (0, 3, 1), (1, 1, 1), (1, 2, 1), (2, 9, 1)])
    keep = np.ones(10, bool)
    keep[3] = False
    knn.prune(keep)
    assert 3 not in _cands(knn, 2) and knn.n_pairs == 1  # {1,2} left
    knn.prune(np.ones(10, bool), target=0)
    assert knn.n_pairs == 0 and _cands(knn, 2) == {}


def test_growth_and_state_round_trip_keep_every_pair_and_score() -> None:
    rng = np.random.default_rng(0)
    knn = SequentialKNN(window=8, confident=1)
    events = [(int(rng.integers(50)), int(rng.integers(400)), float(rng.choice([1.0, 0.5, -0.5]))) for _ in range(30_000)]
    _learn(knn, events, n_users=50, n_items=400)  # grows entries and the hash several times
    meta, arrays = knn.state(50, 400)
    copy = SequentialKNN.from_state(json.loads(json.dumps(meta)), load(save(arrays)))
    users = np.arange(50, dtype=np.int32)
    for a, b in zip(knn.candidates(users, n_items=400), copy.candidates(users, n_items=400), strict=True):
        assert np.array_equal(a, b)
    _learn(knn, events[:500], n_users=50, n_items=400)
    _learn(copy, events[:500], n_users=50, n_items=400)
    for a, b in zip(knn.candidates(users, n_items=400), copy.candidates(users, n_items=400), strict=True):
        assert np.array_equal(a, b)


def test_bad_arguments_name_the_parameter() -> None:
    with pytest.raises(ValueError, match="window"):
        SequentialKNN(window=0)
    with pytest.raises(ValueError, match="decay"):
        SequentialKNN(decay=1.5)


# ---------------------------------------------------------------------------------- in HybridMF
def _rank_of(m: HybridMF, user: str, item: str) -> float:
    ids, kw = m.ranking_inputs(user)
    s = score_items(m.rank_weights, **kw)
    return float(s[ids.index(item)])


def _co_liked(m: HybridMF) -> None:
    t = 1000.0
    for u in range(6):  # "matrix" is always followed by "inception"
        for item in ("matrix", "inception", f"filler{u}"):
            m.learn_one(f"u{u}", item, 5.0, event_time=t)
            t += 1


def test_ratings_signed_a_low_rating_pushes_neighbours_below_where_a_high_one_puts_them() -> None:
    high, low = HybridMF(seed=3), HybridMF(seed=3)
    for m, r in ((high, 5.0), (low, 1.0)):
        _co_liked(m)
        m.learn_one("me", "matrix", r, event_time=5000.0)
    assert _rank_of(high, "me", "inception") > _rank_of(low, "me", "inception")
    assert _rank_of(low, "me", "inception") < _rank_of(low, "stranger", "inception") + 1e-9


def test_a_click_is_positive_feedback() -> None:
    m = HybridMF(seed=3)
    _co_liked(m)
    before = _rank_of(m, "me", "inception")
    m.learn_one("me", "matrix", kind=KIND_CLICK, event_time=5000.0)
    assert _rank_of(m, "me", "inception") > before


def test_an_unrated_comment_that_reads_negative_pushes_the_item_neighbourhood_down() -> None:
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(size=16), rng.normal(size=16)
    pos, neg = pos / np.linalg.norm(pos), neg / np.linalg.norm(neg)

    def trained(comment: np.ndarray | None) -> HybridMF:
        m = HybridMF(seed=3, text_dim=16, sentiment_min=5)
        _co_liked(m)
        for n in range(200):  # rated comments train the sentiment head: pos reads 5 stars, neg 1 star
            e = pos if n % 2 else neg
            m.learn_one(f"critic{n % 7}", f"other{n % 11}", 5.0 if n % 2 else 1.0, kind=KIND_COMMENT, embedding=e, event_time=3000.0 + n)
        if comment is not None:
            m.learn_one("me", "matrix", None, kind=KIND_COMMENT, embedding=comment, event_time=5000.0)
        return m

    neutral = _rank_of(trained(None), "me", "inception")
    assert _rank_of(trained(neg), "me", "inception") < neutral < _rank_of(trained(pos), "me", "inception")
    # and the commented item itself: this user's score of it is lower after "awful" than after "loved it"
    assert _rank_of(trained(neg), "me", "matrix") < _rank_of(trained(pos), "me", "matrix")


def test_an_expired_item_leaves_no_trace_for_the_item_that_reuses_its_row() -> None:
    m = HybridMF(row_ttl_s=100.0, seed=2)
    m.learn_one("u", "old", 5.0, event_time=0.0)
    m.learn_one("u", "a", 5.0, event_time=150.0)
    m.learn_one("v", "b", 5.0, event_time=160.0)  # expires "old"
    assert "old" not in m._imap
    m.learn_one("w", "brandnew", 5.0, event_time=170.0)  # takes the freed row
    m.learn_one("u", "b", 5.0, event_time=180.0)
    v = m._umap["v"]
    rows, _ = m.cooc.candidates(np.array([v], np.int32), n_items=len(m._iids), alive=m._ALIVE_I[: len(m._iids)])
    assert "brandnew" not in m.item_ids_of(rows[0][rows[0] >= 0])  # no pair anyone made
    assert "a" in m.item_ids_of(rows[0][rows[0] >= 0])  # the real one is there
    ids, s = m.rank_scores("v")
    assert np.isneginf(s[[r for r, i in enumerate(ids) if i is None]]).all()  # free rows never compete


def _old_layout(knn: SequentialKNN, meta: dict[str, Any], arrays: dict[str, np.ndarray], n_users: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The state as builds before the inline/long ring split wrote it (co-occurrence state version 1:
    every ring position inline, ``knn_hist``/``knn_histw`` of ``[users, window]``, int64 lengths)."""
    hist = np.full((n_users, knn.window), -1, np.int32)
    histw = np.zeros((n_users, knn.window), np.float32)
    old = {k: v for k, v in arrays.items() if not k.startswith(("knn_ring", "knn_long"))}
    short = arrays["knn_ring"].shape[1]
    hist[:, :short], histw[:, :short] = arrays["knn_ring"], arrays["knn_ringw"]
    rows = arrays["knn_long_row"]
    has = rows > 0
    hist[has, short:], histw[has, short:] = arrays["knn_long"][rows[has]], arrays["knn_longw"][rows[has]]
    old.update(knn_hist=hist, knn_histw=histw, knn_hlen=arrays["knn_hlen"].astype(np.int64))
    return {**meta, "state_version": 1}, old


def test_rings_past_the_inline_positions_get_a_long_row_and_give_it_back() -> None:
    knn = SequentialKNN(window=8, confident=1)
    _learn(knn, [(0, i, 1.0) for i in range(1, 4)] + [(1, i, 1.0) for i in range(1, 7)])
    r = knn._ring
    assert r.long_row[0] == 0 and r.long_row[1] > 0  # 3 events fit inline, 6 do not
    assert knn.recent_items(1).tolist() == [1, 2, 3, 4, 5, 6] and knn.recent_items(0).tolist() == [1, 2, 3]
    inline, full = knn.memory_bytes()["user"], knn.memory_bytes()["user_full"]
    assert inline < full and knn.memory_bytes(n_users=2)["user"] == inline + (full - inline) / 2  # one long row for 2 users
    long_row = int(r.long_row[1])
    knn.forget_user(1)
    assert knn.recent_items(1).tolist() == [] and knn._ring.long_row[1] == 0
    _learn(knn, [(2, i, 1.0) for i in range(1, 10)])  # 9 events wrap the 8-slot ring
    assert knn._ring.long_row[2] == long_row  # the freed row is reused
    assert knn.recent_items(2).tolist() == list(range(2, 10))


def test_state_of_older_builds_loads_with_the_same_pairs_and_scores() -> None:
    rng = np.random.default_rng(3)
    knn = SequentialKNN(window=6, confident=1)
    # users with 1..12 events: some rings inline only, some full and wrapped
    events = [(int(rng.integers(40)), int(rng.integers(60)), float(rng.choice([1.0, 0.5, -0.5]))) for _ in range(300)]
    _learn(knn, events, n_users=40, n_items=60)
    meta, arrays = knn.state(40, 60)
    old_meta, old_arrays = _old_layout(knn, meta, arrays, 40)
    loaded = SequentialKNN.from_state(json.loads(json.dumps(old_meta)), load(save(old_arrays)))
    users = np.arange(40, dtype=np.int32)
    for a, b in zip(knn.candidates(users, n_items=60), loaded.candidates(users, n_items=60), strict=True):
        assert np.array_equal(a, b)
    assert all(knn.recent_items(u).tolist() == loaded.recent_items(u).tolist() for u in range(40))
    _learn(knn, events[:100], n_users=40, n_items=60)
    _learn(loaded, events[:100], n_users=40, n_items=60)
    for a, b in zip(knn.candidates(users, n_items=60), loaded.candidates(users, n_items=60), strict=True):
        assert np.array_equal(a, b)


def test_candidates_into_a_reused_buffer_match_fresh_ones() -> None:
    rng = np.random.default_rng(4)
    knn = SequentialKNN(window=5, confident=1, n_candidates=6)
    _learn(knn, [(int(rng.integers(20)), int(rng.integers(30)), 1.0) for _ in range(400)], n_users=20, n_items=30)
    users = np.arange(20, dtype=np.int32)
    whole = knn.candidates(users, n_items=30)
    buf = (np.full((8, 6), 7, np.int32), np.full((8, 6), 7.0, np.float32))
    for lo in range(0, 20, 8):
        rows, vals = knn.candidates(users[lo : lo + 8], n_items=30, out=buf)
        assert rows.base is buf[0] or rows is buf[0]
        assert np.array_equal(rows, whole[0][lo : lo + 8]) and np.array_equal(vals, whole[1][lo : lo + 8])
    with pytest.raises(ValueError, match="out"):
        knn.candidates(users, n_items=30, out=(np.zeros((20, 5), np.int32), np.zeros((20, 5), np.float32)))


def _top_sets_are_exact(knn: SequentialKNN) -> None:
    n = int(knn._n_ent[0])
    rows, vals = knn._erow[:n], knn._eval[:n]
    for r in range(len(knn._topn)):
        mine = np.flatnonzero(rows == r)
        want = sorted(mine.tolist(), key=lambda e: (-float(vals[e]), e))[: knn.top_k]
        assert sorted(knn._top[r, : knn._topn[r]].tolist()) == sorted(want), r
        assert knn._intop[:n].sum() == knn._topn.sum()


def test_each_item_keeps_exactly_its_strongest_neighbours() -> None:
    rng = np.random.default_rng(3)
    knn = SequentialKNN(window=6, top_k=5, confident=1)
    events = [(int(rng.integers(40)), int(rng.integers(30)), float(rng.choice([1.0, 0.5, -0.5]))) for _ in range(4000)]
    _learn(knn, events, n_users=40, n_items=30)
    assert knn._topn.max() == 5 and (np.bincount(knn._erow[: int(knn._n_ent[0])], minlength=30) > 5).any()
    _top_sets_are_exact(knn)
    keep = np.ones(30, np.bool_)
    keep[7] = False
    knn.prune(keep=keep)  # entries renumbered: the lists are rebuilt
    _top_sets_are_exact(knn)
    rows, vals = knn.candidates(np.arange(40, dtype=np.int32), n_items=30)
    assert 7 not in set(rows[rows >= 0].tolist()) and (vals != 0).any()
