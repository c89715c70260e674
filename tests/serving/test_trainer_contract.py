"""The trainer's real export, wrapped as the trainer's worker does, is served with the same scores
the quality bench measures (``score_items`` on ``HybridMF.ranking_inputs``)."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from serving.metrics import ServingMetrics
from serving.store import ModelStore
from streamproc.examples import KIND_CLICK
from streamproc.settings import Settings
from trainer.scoring import score_items
from trainer.updates import ModelUpdate

HybridMF = pytest.importorskip("trainer.model").HybridMF


def _bench_scores(m: HybridMF, user: str) -> dict[str, float]:
    ids, kw = m.ranking_inputs(user)
    s = score_items(m.rank_weights, **kw)
    return {i: float(s[r]) for r, i in enumerate(ids) if i is not None}


@pytest.mark.parametrize("rank_mf", [0.0, 1.0])
def test_snapshot_and_delta_from_the_trainer_are_served_as_the_bench_scores_them(rank_mf: float) -> None:
    m = HybridMF(n_factors=8, rank_mf=rank_mf)
    for n in range(80):
        m.learn_one(f"u{n % 5}", f"i{(n * 7) % 13}", 1.0 + (n % 5), event_time=1000.0 + n)
    head, tensors = m.export(full=True)
    head |= {"version": 1, "kind": "snapshot", "chunk": 0, "chunks": 1}
    store = ModelStore(Settings(), ServingMetrics(CollectorRegistry()))
    assert store.apply(ModelUpdate(head, tensors).encode()).swapped
    m.learn_one("u1", "i99", 5.0, event_time=2000.0)
    m.learn_one("u1", "i4", None, kind=KIND_CLICK, event_time=2001.0)
    m.learn_one("u77", "i3", 2.0, event_time=2002.0)
    head, tensors = m.export(full=False)
    head |= {"version": 2, "kind": "delta", "base_version": 1,
             "published": [["u1", "i99", 1.0], ["u1", "i4", 1.0], ["u77", "i3", 1.0]]}
    assert store.apply(ModelUpdate(head, tensors).encode()).swapped
    model = store.current
    assert model.ranking == m.rank_weights
    for user in ("u0", "u1", "u2", "u77"):
        expected = _bench_scores(m, user)
        served = model.score(user, list(expected))
        assert served == pytest.approx(list(expected.values()), abs=1e-5)
        # and the served top 10 is the bench's top 10 among the items the user has not given feedback on
        rec = [i for i, _ in model.recommend(user, 10, exclude_seen=False).items]
        best = sorted(expected, key=lambda i: -expected[i])[:10]
        assert [round(expected[i], 5) for i in rec] == [round(expected[i], 5) for i in best]
    assert "i99" not in [i for i, _ in model.recommend("u1", 20).items]  # seen via `published`
    assert not model.recommend("u77", 3).fallback
    # a stranger gets the popularity part alone, in the same order as the bench's
    stranger = [i for i, _ in model.recommend("stranger", 5).items]
    ids, kw = m.ranking_inputs("stranger")
    s = score_items(m.rank_weights, **kw)
    assert [round(float(s[ids.index(i)]), 5) for i in stranger] == sorted((round(float(x), 5) for x in s), reverse=True)[:5]
    assert np.isfinite([sc for _, sc in model.recommend("u1", 5).items]).all()
    # the trainer switches its popularity horizon: the next delta's header alone switches serving
    m._horizon = 0
    m.learn_one("u2", "i5", 4.0, event_time=2003.0)
    head, tensors = m.export(full=False)
    head |= {"version": 3, "kind": "delta", "base_version": 2, "published": [["u2", "i5", 1.0]]}
    assert store.apply(ModelUpdate(head, tensors).encode()).swapped
    assert store.current.ranking.horizon == 0
    expected = _bench_scores(m, "u1")
    assert store.current.score("u1", list(expected)) == pytest.approx(list(expected.values()), abs=1e-5)
