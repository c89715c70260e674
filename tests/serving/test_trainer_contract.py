"""The trainer's real export, wrapped as the trainer's worker does, is served with the same scores."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from serving.metrics import ServingMetrics
from serving.store import ModelStore
from streamproc.settings import Settings
from trainer.updates import ModelUpdate

HybridMF = pytest.importorskip("trainer.model").HybridMF


def test_snapshot_and_delta_from_the_trainer_score_like_predict_one() -> None:
    m = HybridMF(n_factors=8)
    for n in range(60):
        m.learn_one(f"u{n % 5}", f"i{n % 13}", 1.0 + (n % 4))
    head, tensors = m.export(full=True)
    head |= {"version": 1, "kind": "snapshot", "chunk": 0, "chunks": 1}
    store = ModelStore(Settings(), ServingMetrics(CollectorRegistry()))
    assert store.apply(ModelUpdate(head, tensors).encode()).swapped
    m.learn_one("u1", "i99", 5.0)
    m.learn_one("u77", "i3", 2.0)
    head, tensors = m.export(full=False)
    head |= {"version": 2, "kind": "delta", "base_version": 1, "published": [["u1", "i99", 1.0], ["u77", "i3", 1.0]]}
    assert store.apply(ModelUpdate(head, tensors).encode()).swapped
    model = store.current
    for user in ("u0", "u1", "u77"):
        for item in ("i0", "i3", "i99"):
            served = model.score(user, [item])[0]
            expected = m.predict_one(user, item)
            if 0.5 < expected < 5.0:  # predict_one clips to the rating scale; serving ranks raw scores
                assert served == pytest.approx(expected, abs=1e-4)
    assert "i99" not in [i for i, _ in model.recommend("u1", 20).items]  # seen via `published`
    assert not model.recommend("u77", 3).fallback
