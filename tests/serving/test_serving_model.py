"""The immutable served model: top-k, exclusion, fallback, copy-on-write versions."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from serving.bench import SyntheticModel
from serving.model import RejectedUpdate, ServingModel
from trainer.updates import ModelUpdate


def _brute_topk(sm: SyntheticModel, user: int, k: int) -> list[str]:
    scores = sm.global_mean + sm.user_bias[user] + sm.item_bias + sm.item_factors @ sm.user_factors[user]
    return [sm.item_ids[i] for i in np.argsort(-scores, kind="stable")[:k]]


def test_topk_matches_brute_force_scores() -> None:
    sm = SyntheticModel(n_users=30, n_items=400, factors=8)
    m = ServingModel.build(None, sm.snapshot())
    for u in range(0, 30, 7):
        rec = m.recommend(f"u{u}", 15)
        assert [i for i, _ in rec.items] == _brute_topk(sm, u, 15)
        assert not rec.fallback and rec.version == 1
        assert [s for _, s in rec.items] == sorted((s for _, s in rec.items), reverse=True)


def test_k_larger_than_catalog_returns_every_item() -> None:
    m = ServingModel.build(None, SyntheticModel(n_users=2, n_items=5, factors=2).snapshot())
    assert len(m.recommend("u0", 50).items) == 5
    with pytest.raises(ValueError, match="k"):
        m.recommend("u0", 0)


def test_unknown_user_gets_popularity_fallback() -> None:
    sm = SyntheticModel(n_users=5, n_items=50, factors=4)
    m = ServingModel.build(None, sm.snapshot())
    rec = m.recommend("stranger", 3)
    assert rec.fallback
    assert [i for i, _ in rec.items] == [sm.item_ids[i] for i in np.argsort(-sm.item_popularity, kind="stable")[:3]]


def test_seen_items_are_excluded_and_unknown_items_ignored() -> None:
    sm = SyntheticModel(n_users=5, n_items=50, factors=4)
    m = ServingModel.build(None, sm.snapshot())
    best = [i for i, _ in m.recommend("u1", 3).items]
    d = sm.delta(1, published=[["u1", best[0], 1.0], ["u1", "no-such-item", 1.0], ["stranger", "i0", 1.0]])
    m2 = ServingModel.build(m, [d])
    got = [i for i, _ in m2.recommend("u1", 3).items]
    assert best[0] not in got
    assert best[0] in [i for i, _ in m2.recommend("u1", 3, exclude_seen=False).items]
    assert "i0" not in [i for i, _ in m2.recommend("stranger", 3).items]  # fallback excludes too
    assert m.seen == {}  # the old version is untouched


def test_seen_memory_is_bounded_per_user() -> None:
    sm = SyntheticModel(n_users=2, n_items=20, factors=2)
    m = ServingModel.build(None, sm.snapshot())
    pub = [["u0", f"i{i}", 1.0] for i in range(10)]
    m2 = ServingModel.build(m, [sm.delta(1, published=pub)], seen_per_user=3)
    assert m2.seen["u0"] == ("i7", "i8", "i9")


def test_delta_leaves_the_previous_version_unchanged() -> None:
    sm = SyntheticModel(n_users=10, n_items=100, factors=4)
    m1 = ServingModel.build(None, sm.snapshot())
    before = {u: m1.recommend(f"u{u}", 10) for u in range(10)}
    m2 = ServingModel.build(m1, [sm.delta(30, new_items=5)])
    assert m2.version == 2 and m2.n_items == 105 and m1.n_items == 100
    assert all(m1.recommend(f"u{u}", 10) == before[u] for u in range(10))
    assert not m1.has_user("nobody") and m1.score("u0", ["i104"]) == [None]
    for u in range(10):  # the new version equals a model built from scratch
        assert [i for i, _ in m2.recommend(f"u{u}", 10).items] == _brute_topk(sm, u, 10)


def test_many_deltas_with_growth_stay_consistent() -> None:
    sm = SyntheticModel(n_users=20, n_items=30, factors=4)
    models = [ServingModel.build(None, sm.snapshot())]
    for _ in range(40):  # forces several doublings of the item table
        models.append(ServingModel.build(models[-1], [sm.delta(5, new_items=3)]))
    fresh = ServingModel.build(None, sm.snapshot())
    last = models[-1]
    assert last.item_ids() == fresh.item_ids()
    for u in range(20):
        assert last.recommend(f"u{u}", 10, False).items == fresh.recommend(f"u{u}", 10, False).items
    assert models[0].n_items == 30 and len(models[0].recommend("u0", 100).items) == 30


def test_chunked_snapshot_equals_single_message() -> None:
    sm = SyntheticModel(n_users=50, n_items=300, factors=8)
    one = ServingModel.build(None, sm.snapshot(max_bytes=1 << 30))
    chunks = sm.snapshot(max_bytes=2000)
    assert len(chunks) > 3
    many = ServingModel.build(None, chunks)
    assert many.recommend("u3", 10).items == one.recommend("u3", 10).items


def test_gap_and_no_base_and_shape_are_rejected() -> None:
    sm = SyntheticModel(n_users=3, n_items=10, factors=4)
    m = ServingModel.build(None, sm.snapshot())
    with pytest.raises(RejectedUpdate) as e:
        ServingModel.build(None, [sm.delta(2)])
    assert e.value.reason == "no_base"
    bad = ModelUpdate({"version": 9, "kind": "delta", "base_version": 5, "item_ids": []}, {})
    with pytest.raises(RejectedUpdate) as e:
        ServingModel.build(m, [bad])
    assert e.value.reason == "gap"
    wrong = ModelUpdate({"version": 2, "kind": "delta", "base_version": 1, "item_ids": ["i1"]},
                        {"item_factors": np.zeros((1, 7), np.float32)})
    with pytest.raises(RejectedUpdate) as e:
        ServingModel.build(m, [wrong])
    assert e.value.reason == "shape"


def test_rows_expired_by_the_trainer_are_not_served_until_they_come_back() -> None:
    sm = SyntheticModel(n_users=5, n_items=30, factors=4)
    m1 = ServingModel.build(None, sm.snapshot())
    top = m1.recommend("u1", 1).items[0][0]
    popular = m1.recommend("nobody", 1).items[0][0]
    d = sm.delta(1)
    d.header = replace(d.header, expired_user_ids=["u1"], expired_item_ids=[top, popular, "never-known"])
    m2 = ServingModel.build(m1, [d])
    assert m2.recommend("u1", 5).fallback and not m2.has_user("u1") and m1.has_user("u1")
    assert all(i not in (top, popular) for i, _ in m2.recommend("u2", 30).items)
    assert popular not in [i for i, _ in m2.recommend("nobody", 30).items]
    back = sm.delta(1)
    back.header = replace(back.header, user_ids=["u1"], item_ids=[top])
    back.tensors = {"user_factors": sm.user_factors[1:2], "item_factors": sm.item_factors[[int(top[1:])]]}
    m3 = ServingModel.build(m2, [back])
    assert m3.has_user("u1") and top in [i for i, _ in m3.recommend("u1", 30).items]
    assert popular not in [i for i, _ in m3.recommend("u1", 30).items]


def test_user_pages_are_copied_on_write_across_many_versions() -> None:
    """Users span several 64-row pages: each delta copies only the pages it changes, every older
    version still answers exactly as it did, and the newest holds every user's newest row."""
    sm = SyntheticModel(n_users=300, n_items=40, factors=4)
    models = [ServingModel.build(None, sm.snapshot(max_bytes=4_000))]
    answers = [{u: models[0].recommend(f"u{u}", 5) for u in range(300)}]
    for _ in range(6):
        models.append(ServingModel.build(models[-1], [sm.delta(70, new_items=1)]))
        answers.append({u: models[-1].recommend(f"u{u}", 5) for u in range(300)})
    for m, before in zip(models, answers, strict=True):
        assert all(m.recommend(f"u{u}", 5) == before[u] for u in range(300))
    assert all(np.array_equal(models[-1].user_vector(f"u{u}"), sm.user_factors[u]) for u in range(300))
    assert not all(np.array_equal(models[0].user_vector(f"u{u}"), sm.user_factors[u]) for u in range(300))


def test_paged_table_shares_untouched_pages_and_zeroes_leftovers() -> None:
    from serving.model import _PAGE, _PagedTable

    t0 = _PagedTable.empty({"x": (2,), "b": ()})
    ids = [f"u{j}" for j in range(3 * _PAGE + 5)]
    t1 = t0.upsert(ids, {"x": np.arange(2 * len(ids), dtype=np.float32).reshape(-1, 2), "b": np.ones(len(ids), np.float32)}, ("x", "b"))
    t2 = t1.upsert(["u1", "u1"], {"x": np.array([[7, 7], [9, 9]], np.float32)}, ("x", "b"))  # the last of a duplicate wins
    assert t2.rows("x")[1].tolist() == [9.0, 9.0] and t1.rows("x")[1].tolist() == [2.0, 3.0]
    assert t2.arrays["x"][0] is not t1.arrays["x"][0]
    assert all(a is b for a, b in zip(t2.arrays["x"][1:], t1.arrays["x"][1:], strict=True))  # untouched pages shared
    assert all(a is b for a, b in zip(t2.arrays["b"], t1.arrays["b"], strict=True))  # an array the update lacks: shared
    n = len(ids)
    rejected = t2.upsert(["r0", "r1"], {"x": np.full((2, 2), 5, np.float32), "b": np.full(2, 5, np.float32)}, ("x", "b"))
    assert rejected.rows("x")[n].tolist() == [5.0, 5.0]
    t3 = t2.upsert(["other"], {"b": np.full(1, 2, np.float32)}, ("x", "b"))  # no "x": its new row reads 0, not a leftover
    assert t3.rows("x")[n].tolist() == [0.0, 0.0] and t3.rows("b")[n] == 2.0 and t3.index.get("r0") is None
    assert t2.n == n and t3.n == n + 1
    with pytest.raises(ValueError):
        t3.rows("x")[0][0] = 1.0  # rows are read-only
    with pytest.raises(IndexError):
        t1.rows("x")[n]


def test_seen_overlay_removes_bounds_and_folds() -> None:
    from serving.model import _Seen

    s0 = _Seen({"a": ("i1",), "b": ("i2",)})
    s1 = s0.changed([("a", "i3", 0.0), ("c", "i4", 0.0), ("a", "i1", 0.0)], ["b", "nobody"], limit=2)
    assert dict(s1) == {"a": ("i1", "i3"), "c": ("i4",)} and dict(s0) == {"a": ("i1",), "b": ("i2",)}
    assert "b" not in s1 and s1.get("b") is None and len(s1) == 2
    s2 = s1.changed([("a", "i5", 0.0)], [], limit=2)
    assert s2["a"] == ("i3", "i5") and s1["a"] == ("i1", "i3")
    big = _Seen({f"u{j}": ("x",) for j in range(2000)})
    folded = big.changed([(f"n{j}", "y", 0.0) for j in range(1100)], ["u0"], limit=5)
    assert folded._over == {} and len(folded) == 2000 - 1 + 1100 and "u0" not in folded and big["u0"] == ("x",)


def test_a_served_model_as_a_snapshot_builds_a_replica_that_serves_the_same() -> None:
    """``ServingModel.snapshot`` (what ``RECO_PUBLISH_SNAPSHOTS_S`` publishes): chunks within the
    message limit, items first, expired users and items left out, candidates through the
    snapshot's item list; a replica built from it scores every user as the original does."""
    from prometheus_client import CollectorRegistry

    from serving.metrics import ServingMetrics
    from serving.settings import ServingSettings
    from serving.store import ModelStore
    from trainer.updates import UpdateHeader

    sm = SyntheticModel(3000, 1500, 8, candidates=6)
    store = ModelStore(ServingSettings(), ServingMetrics(CollectorRegistry()))
    for u in sm.snapshot(max_bytes=30_000):
        store.apply(u.encode())
    for _ in range(3):
        store.apply(sm.delta(300).encode())
    gone = sm.delta(30)
    dead_item = next(i for i in sm.item_ids if i not in gone.header.item_ids)
    gone.header.expired_user_ids.append("u5")
    gone.header.expired_item_ids.append(dead_item)
    assert store.apply(ModelUpdate(gone.header, gone.tensors).encode()).swapped
    a = store.current
    header = UpdateHeader(version=a.version, kind="snapshot", deltas_from=4, global_mean=a.global_mean, ranking=a.ranking,
                          created=1.0, extra={"publisher": "serving"})
    chunks, parts = a.snapshot(header, 20_000)
    encoded = [p.encode() for p in parts]
    assert len(encoded) == chunks > 10 and max(map(len, encoded)) <= 20_000
    heads = [ModelUpdate.decode(e).header for e in encoded]
    assert [h.chunk for h in heads] == list(range(chunks)) and {h.version for h in heads} == {a.version}
    assert {h.snapshot_items for h in heads} == {1499} and {h.extra.get("publisher") for h in heads} == {"serving"}
    first_user_chunk = next(n for n, h in enumerate(heads) if h.user_ids)
    assert all(not h.user_ids for h in heads[:first_user_chunk]) and all(not h.item_ids for h in heads[first_user_chunk:])
    replica = ModelStore(ServingSettings(), ServingMetrics(CollectorRegistry()))
    results = [replica.apply(e) for e in reversed(encoded)]
    assert results[-1].swapped and replica.version == a.version
    b = replica.current
    assert not b.has_user("u5") and b.item_row(dead_item) is None and (b.n_users, b.n_items) == (2999, 1499)
    items = [i for i in sm.item_ids if i != dead_item]
    assert all(b.score(f"u{k}", items) == a.score(f"u{k}", items) for k in range(3000) if k != 5)


def test_the_popularity_order_read_partly_is_the_stable_full_order() -> None:
    from serving.model import _PopularOrder

    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(1, 9000))
        x = rng.normal(size=n) if trial % 3 == 0 else rng.integers(0, int(rng.integers(1, 50)), n)  # many ties
        order = _PopularOrder(x.astype(np.float32))
        full = np.argsort(-x.astype(np.float32), kind="stable")
        for k in (1, 5, 200, 1100, n):
            np.testing.assert_array_equal(order.head(k), full[:k])
        np.testing.assert_array_equal(order.full(), full)
