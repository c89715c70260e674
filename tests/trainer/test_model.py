"""HybridMF behaviours: text, sentiment head, clicks, TTL, deltas, batching = sequential."""

from __future__ import annotations

from typing import Any

import numpy as np

from streamproc.examples import KIND_CLICK, KIND_COMMENT, KIND_ITEM, KIND_RATING, ExampleBatch
from trainer.model import HybridMF


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def topic_embeddings(rng: np.random.Generator, centre: np.ndarray, n: int, noise: float = 0.02) -> np.ndarray:
    return unit(centre + noise * rng.standard_normal((n, centre.shape[0])))


def comments(users: list[str], items: list[str], emb: np.ndarray, ratings: list[float] | np.ndarray, t0: float = 1e9) -> ExampleBatch:
    n = len(users)
    t = t0 + np.arange(n, dtype=float)
    return ExampleBatch.build(event_ids=[""] * n, user_ids=users, item_ids=items, kinds=[KIND_COMMENT] * n,
                              targets=ratings, event_times=t, published=t, processed=t, embeddings=emb,
                              emb_rows=list(range(n)))


def test_sentiment_head_learns_from_rated_comments() -> None:
    rng = np.random.default_rng(0)
    pos, neg = unit(rng.standard_normal(384)), unit(rng.standard_normal(384))
    m = HybridMF(n_factors=8, seed=0)
    for _ in range(30):
        emb = np.vstack([topic_embeddings(rng, pos, 10), topic_embeddings(rng, neg, 10)])
        m.learn_batch(comments([f"u{k}" for k in range(20)], [f"i{k}" for k in range(20)], emb, [5.0] * 10 + [1.0] * 10))
    probe = np.vstack([topic_embeddings(rng, pos, 1), topic_embeddings(rng, neg, 1)])
    est = m.learn_batch(comments(["x", "y"], ["new1", "new2"], probe, [np.nan, np.nan]))
    assert est[0] > 4.0 and est[1] < 2.0


def test_item_known_only_from_comments_can_be_recommended() -> None:
    rng = np.random.default_rng(1)
    liked, disliked = unit(rng.standard_normal(384)), unit(rng.standard_normal(384))
    m = HybridMF(n_factors=8, seed=1)
    users = [f"u{k}" for k in range(20)]
    for rnd in range(20):
        # rated items with comments: "liked"-text items get 5, "disliked"-text items get 1
        emb = np.vstack([topic_embeddings(rng, liked, 20), topic_embeddings(rng, disliked, 20)])
        items = [f"good{k % 5}" for k in range(20)] + [f"bad{k % 5}" for k in range(20)]
        m.learn_batch(comments(users + users, items, emb, [5.0] * 20 + [1.0] * 20, t0=1e9 + rnd * 100))
    # two new items with unrated comments only
    emb = np.vstack([topic_embeddings(rng, liked, 3), topic_embeddings(rng, disliked, 3)])
    m.learn_batch(comments(["v1", "v2", "v3"] * 2, ["fresh_good"] * 3 + ["fresh_bad"] * 3, emb, [np.nan] * 6, t0=2e9))
    header, tensors = m.export(full=True)
    i_good, i_bad = header["item_ids"].index("fresh_good"), header["item_ids"].index("fresh_bad")
    u = header["user_ids"].index("u0")
    score = lambda i: header["global_mean"] + tensors["user_bias"][u] + tensors["item_bias"][i] + tensors["user_factors"][u] @ tensors["item_factors"][i]  # noqa: E731
    assert score(i_good) > score(i_bad) + 1.0
    assert m.predict_one("u0", "fresh_good") > m.global_mean


def clicks(user: str, items: list[str], t0: float) -> ExampleBatch:
    n = len(items)
    t = t0 + np.arange(n, dtype=float)
    return ExampleBatch.build(event_ids=[""] * n, user_ids=[user] * n, item_ids=items, kinds=[KIND_CLICK] * n,
                              targets=[np.nan] * n, event_times=t, published=t, processed=t)


def test_clicks_with_negatives_raise_the_clicked_item() -> None:
    m = HybridMF(n_factors=8, seed=2, n_negatives=4)
    m.learn_batch(clicks("other", [f"i{k}" for k in range(50)], 1e9))  # 50 known items
    others = [f"i{k}" for k in range(1, 50)]
    before = m.predict_one("u", "i0") - np.mean([m.predict_one("u", x) for x in others])
    scores = np.concatenate([m.learn_batch(clicks("u", ["i0"] * 10, 1e9 + 100 * r)) for r in range(5)])
    after = m.predict_one("u", "i0") - np.mean([m.predict_one("u", x) for x in others])
    assert after > before + 0.1
    # prequential click score: the clicked item ends up ranked above most sampled candidates
    assert scores[-10:].mean() > 0.9 and 0.0 <= scores.min() <= scores.max() <= 1.0


def ratings(users: list[str], items: list[str], r: list[float], t: list[float]) -> ExampleBatch:
    n = len(users)
    return ExampleBatch.build(event_ids=[""] * n, user_ids=users, item_ids=items, kinds=[KIND_RATING] * n,
                              targets=r, event_times=t, published=t, processed=t)


def test_rows_expire_after_ttl_and_are_reused() -> None:
    m = HybridMF(n_factors=4, row_ttl_s=100.0, replay_size=10, replay_ratio=0.0)
    m.learn_batch(ratings(["old"], ["stale"], [4.0], [1000.0]))
    m.export(full=False)
    m.learn_batch(ratings(["new"], ["fresh"], [2.0], [1200.0]))
    assert m.n_users == 1 and m.n_items == 1
    header, tensors = m.export(full=False)
    assert header["expired_user_ids"] == ["old"] and header["expired_item_ids"] == ["stale"]
    assert header["user_ids"] == ["new"] and len(m.replay.entries) == 1
    m.learn_batch(ratings(["newer"], ["fresher"], [3.0], [1250.0]))
    assert len(m._uids) == 2  # the expired row was reused
    assert m.predict_one("old", "stale") == m.predict_one("nobody", "nothing")


def test_forget_erases_rows_from_state_and_snapshots_and_tells_the_next_delta() -> None:
    m = HybridMF(n_factors=4, replay_size=100, replay_ratio=0.0)
    m.learn_batch(ratings(["alice-secret", "bob", "alice-secret"], ["x", "y", "gone-item"], [5.0, 4.0, 2.0], [1.0, 2.0, 3.0]))
    m.export(full=False)
    assert m.forget(users=["alice-secret", "nobody"], items=["gone-item"]) == (["alice-secret"], ["gone-item"])
    meta, arrays = m.state()
    blob = repr(meta).encode() + b"".join(a.tobytes() for a in arrays.values())
    assert b"alice-secret" not in blob and b"gone-item" not in blob
    full_head, _ = m.export(full=True)
    assert "alice-secret" not in repr(full_head) and "gone-item" not in repr(full_head)
    assert len(m.replay.entries) == 1  # bob's only
    head, _ = m.export(full=False)
    assert head["expired_user_ids"] == ["alice-secret"] and head["expired_item_ids"] == ["gone-item"]
    assert m.export(full=False)[0]["expired_user_ids"] == []
    # a later event starts a fresh profile: nothing of the old one comes back
    m.learn_batch(ratings(["alice-secret"], ["y"], [3.0], [4.0]))
    assert m.cooc.recent_items(m._umap["alice-secret"]).tolist() == [m._imap["y"]]
    restored = HybridMF.from_state(*m.state())
    assert restored.n_users == 2 and restored.n_items == 2


def test_delta_export_has_touched_rows_only() -> None:
    m = HybridMF(n_factors=4)
    m.learn_batch(ratings(["a", "b"], ["x", "y"], [4.0, 3.0], [1.0, 2.0]))
    assert sorted(m.export(full=False)[0]["user_ids"]) == ["a", "b"]
    m.learn_batch(ratings(["a"], ["z"], [5.0], [3.0]))
    header, tensors = m.export(full=False)
    assert header["user_ids"] == ["a"] and header["item_ids"] == ["z"]
    assert tensors["user_factors"].shape == (1, 4)
    assert m.export(full=False)[0]["user_ids"] == []
    assert sorted(m.export(full=True)[0]["item_ids"]) == ["x", "y", "z"]


def test_batching_is_sequential_inside() -> None:
    rng = np.random.default_rng(3)
    n = 700  # also grows the tables past their initial capacity
    users = [f"u{x}" for x in rng.integers(0, 300, n)]
    items = [f"i{x}" for x in rng.integers(0, 400, n)]
    r = list(rng.integers(1, 11, n) / 2.0)
    t = list(np.arange(n, dtype=float) + 1e9)
    one = HybridMF(n_factors=8)
    seq = np.concatenate([one.learn_batch(ratings(users[k : k + 1], items[k : k + 1], r[k : k + 1], t[k : k + 1])) for k in range(n)])
    big = HybridMF(n_factors=8).learn_batch(ratings(users, items, r, t))
    assert np.array_equal(seq, big)


def test_each_example_is_predicted_before_it_is_learned() -> None:
    m = HybridMF(n_factors=4)
    p = m.learn_batch(ratings(["a", "a"], ["x", "x"], [5.0, 5.0], [1.0, 2.0]))
    assert abs(p[0] - (m.rating_min + m.rating_max) / 2) < 0.05  # nothing known yet (tiny random factors)
    assert p[1] > p[0]  # learned from the first example


def test_on_drift_makes_rows_learn_fast_again() -> None:
    m = HybridMF(n_factors=4)
    for k in range(20):
        m.learn_batch(ratings(["a"] * 10, ["x"] * 10, [4.0] * 10, list(np.arange(10.0) + 10 * k)))
    slow = m.clone()
    meta, arrays = m.state()
    slow = HybridMF.from_state(meta, arrays)
    m.on_drift()
    flip = ratings(["a"] * 5, ["x"] * 5, [1.0] * 5, list(np.arange(5.0) + 500))
    assert m.learn_batch(flip)[-1] < slow.learn_batch(flip)[-1]


def test_learn_one_river_style() -> None:
    m = HybridMF(n_factors=4)
    m.learn_one("a", "x", 4.5)
    m.learn_one("a", "y", kind=KIND_CLICK)
    m.learn_one("a", "z", embedding=np.ones(384, np.float32) / np.sqrt(384))
    assert (m.n_users, m.n_items) == (1, 3)


def test_log_popularity_stays_small_on_a_long_stream_and_keeps_its_order() -> None:
    from trainer.scoring import score_items

    m = HybridMF(n_factors=4, seed=1)
    m._clock = 5e7  # as after fifty million events
    for n in range(300):
        m.learn_one(f"u{n % 7}", f"i{n % 5 if n % 3 else 0}", 4.0, event_time=float(n))
    before = m.export(full=True)[1]["item_log_popularity"]  # a snapshot never moves the reference (replicas may skip it)
    head, tensors = m.export(full=False)  # a delta moves it, and then carries every item row
    lp = tensors["item_log_popularity"]
    assert len(head["item_ids"]) == m.n_items and np.abs(before).max() > 1e5 and np.abs(lp[lp > -1e8]).max() < 1e3
    # per horizon, the order of the counts decayed to now (float32 at 5e7 had lost it)
    ni = m.n_items
    now = m._RPOP[:ni] * np.exp(-(m._clock - m._RPOPT[:ni, None]) / m._pop_taus)
    for h in range(lp.shape[1]):
        assert list(np.argsort(-lp[:, h], kind="stable")) == list(np.argsort(-now[:, h].astype(np.float32), kind="stable"))
    ids, kw = m.ranking_inputs("nobody")
    top = int(np.argmax(score_items(m.rank_weights, **kw)))
    assert ids[top] == "i0"  # the most frequent item


def test_item_content_places_a_cold_item_near_items_with_similar_text() -> None:
    rng = np.random.default_rng(5)
    topic_a, topic_b = unit(rng.standard_normal(384)), unit(rng.standard_normal(384))
    m = HybridMF(n_factors=8, seed=2, text_lr=0.05)
    items = [f"a{k}" for k in range(10)] + [f"b{k}" for k in range(10)]
    emb = np.concatenate([topic_embeddings(rng, topic_a, 10), topic_embeddings(rng, topic_b, 10)])
    t = np.arange(20, dtype=float)
    m.learn_batch(ExampleBatch.build(event_ids=[""] * 20, user_ids=[""] * 20, item_ids=items, kinds=[KIND_ITEM] * 20,
                                     targets=[np.nan] * 20, event_times=t, published=t, processed=t,
                                     embeddings=emb, emb_rows=list(range(20))))
    assert m.n_items == 20 and m.n_users == 0  # content gives items rows, never a user ""
    users = [f"u{k}" for k in range(30)]
    for epoch in range(15):
        us = [u for u in users for _ in range(4)]
        its = [f"{'ab'[c]}{j}" for c, j in zip(rng.integers(0, 2, 120), rng.integers(0, 10, 120), strict=True)]
        r = [5.0 if (k % 2 == 0) == (x[0] == "a") else 1.0 for k in range(30) for x in its[4 * k : 4 * k + 4]]
        m.learn_batch(ratings(us, its, r, list(100.0 + epoch * 200 + np.arange(len(us)))))
    new = ExampleBatch.build(event_ids=["", ""], user_ids=["", ""], item_ids=["a-new", "b-new"], kinds=[KIND_ITEM] * 2,
                             targets=[np.nan] * 2, event_times=[9e3, 9e3], published=[9e3, 9e3], processed=[9e3, 9e3],
                             embeddings=np.stack([topic_embeddings(rng, topic_a, 1)[0], topic_embeddings(rng, topic_b, 1)[0]]),
                             emb_rows=[0, 1])
    assert np.isnan(m.learn_batch(new)).all()
    # an "a" lover scores the new "a" item above the new "b" one, with no feedback on either
    a_new, b_new = m.item_rows(["a-new", "b-new"])
    for user, liked, other in (("u0", a_new, b_new), ("u1", b_new, a_new)):
        _, s = m.rank_scores(user)
        assert s[liked] > s[other]


def test_rated_comment_prediction_uses_its_own_text_once_the_head_is_trained() -> None:
    rng = np.random.default_rng(1)
    pos, neg = unit(rng.standard_normal(384)), unit(rng.standard_normal(384))
    m = HybridMF(n_factors=4, seed=0)
    n = 400
    good = rng.random(n) < 0.5
    emb = np.where(good[:, None], topic_embeddings(rng, pos, n), topic_embeddings(rng, neg, n))
    y = np.where(good, 5.0, 1.0)
    users, items = [f"u{k}" for k in range(n)], [f"i{k % 7}" for k in range(n)]
    m.learn_batch(comments(users[:300], items[:300], emb[:300], y[:300]))
    assert m._SST[2] > 0.3  # the head earned a share
    # new users, busy items: the factors alone cannot tell good from bad, the text can
    preds = m.learn_batch(comments(users[300:], items[300:], emb[300:], y[300:]))
    assert np.abs(preds - y[300:]).mean() < 1.0
    head = m.last_sentiment  # the head's own estimates, as of the batch's start
    assert np.isfinite(head).all() and (head[good[300:]] > 4).all() and (head[~good[300:]] < 2).all()


def test_an_unrated_comment_whose_text_says_little_is_read_by_the_factors() -> None:
    # the ratings follow the items, the texts are noise: the head reads nothing into them and earns
    # no share, so an unrated comment is predicted (and learned) as the factors see it
    rng = np.random.default_rng(3)
    m = HybridMF(n_factors=4, seed=0)
    users = [f"u{k}" for k in range(40)]
    for rnd in range(15):
        items = [f"good{k % 4}" if k % 2 else f"bad{k % 4}" for k in range(40)]
        m.learn_batch(comments(users, items, unit(rng.standard_normal((40, 384))), [5.0 if k % 2 else 1.0 for k in range(40)],
                               t0=1e9 + 100 * rnd))
    assert m._SST[1] >= m.sentiment_min and m._SST[2] < 0.05 * m._SST[3]  # trained, with (almost) no share
    probe = unit(rng.standard_normal((2, 384)))
    before = [m.predict_one("u0", x) for x in ("good1", "bad0")]
    head = m.global_mean + m._SST[0] + probe @ m._SW  # the head's own reading: near the mean
    assert np.abs(head - m.global_mean).max() < 1.0
    pred = m.learn_batch(comments(["u0", "u0"], ["good1", "bad0"], probe, [np.nan, np.nan], t0=3e9))
    assert pred[0] > 4.0 and pred[1] < 2.0 and np.abs(pred - before).max() < 0.2
    assert m.predict_one("u0", "good1") > 4.0 and m.predict_one("u0", "bad0") < 2.0  # not dragged to the mean


def _state_of_older_builds(m: HybridMF) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``m.state()`` as builds before the compact text table wrote it: ``TU``/``TUN`` a text vector
    and count per user row (zeros for users without comments), no ``TU_ROW``/``TU_VECS``/``TU_COUNTS``."""
    meta, arrays = m.state()
    rows = arrays.pop("TU_ROW")
    vecs, counts = arrays.pop("TU_VECS"), arrays.pop("TU_COUNTS")
    arrays["TU"], arrays["TUN"] = vecs[rows], counts[rows]
    meta = {k: v for k, v in meta.items() if k != "tu_free"}
    return meta, arrays


def test_only_users_with_comments_hold_a_text_vector_and_old_checkpoints_load() -> None:
    import json

    from safetensors.numpy import load, save

    rng = np.random.default_rng(5)
    m = HybridMF(n_factors=4, seed=0, row_ttl_s=50.0)
    emb = unit(rng.standard_normal((6, 384)))
    for r in range(3):
        m.learn_batch(comments(["a", "b", "c", "a", "b", "c"], [f"i{k}" for k in range(6)], emb, [4.0, 2.0, 5.0, 3.0, 1.0, 4.0], t0=1e9 + 10 * r))
        for k in range(20):
            m.learn_one(f"r{k}", f"i{k % 6}", 3.0 + k % 3, event_time=1e9 + 10 * r + 1)
    assert m.n_users == 23 and m._n_tu - 1 == 3  # a text row for each commenter only
    text = m._user_vectors(np.array([m._umap["a"]]))[0] - m._P[m._umap["a"]]
    assert np.abs(text).max() > 0
    meta, arrays = _state_of_older_builds(m)
    old = HybridMF.from_state(json.loads(json.dumps(meta)), load(save(arrays)))
    assert old._n_tu - 1 == 3
    probe = [("a", "i1"), ("b", "i0"), ("r3", "i2"), ("c", "i5")]
    assert [old.predict_one(u, i) for u, i in probe] == [m.predict_one(u, i) for u, i in probe]
    for full in (m, old):  # both learn on: expiry frees the commenters' text rows, new commenters reuse them
        full.learn_batch(comments(["d", "e"], ["i1", "i2"], emb[:2], [5.0, 2.0], t0=1e9 + 500))
    assert sorted(m._tu_free) == [1, 2, 3] and m._n_tu - 1 == 5 and m.n_users == 2  # a, b, c and the r* expired
    for full in (m, old):
        full.learn_batch(comments(["f"], ["i3"], emb[:1], [4.0], t0=1e9 + 501))
    assert len(m._tu_free) == 2 and m._n_tu - 1 == 5
    assert [old.predict_one(u, i) for u, i in (("d", "i1"), ("f", "i3"))] == [m.predict_one(u, i) for u, i in (("d", "i1"), ("f", "i3"))]
    h1, t1 = m.export(full=True)
    h2, t2 = old.export(full=True)
    assert h1["user_ids"] == h2["user_ids"] and np.array_equal(t1["user_factors"], t2["user_factors"])
