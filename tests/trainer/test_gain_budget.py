"""The young profiles' gain learning is budgeted (trainer.model._GAIN_TOKENS_PER_EVENT)."""

from __future__ import annotations

import numpy as np

from streamproc.examples import KIND_CLICK, ExampleBatch
from trainer import model as model_mod
from trainer.model import HybridMF


def _clicks(users: list[str], items: list[str], t0: float) -> ExampleBatch:
    n = len(users)
    return ExampleBatch.build(event_ids=[f"e{t0}-{j}" for j in range(n)], user_ids=users, item_ids=items,
                              kinds=[KIND_CLICK] * n, targets=[float("nan")] * n, event_times=[t0 + j for j in range(n)],
                              published=[t0 + j for j in range(n)], processed=[t0 + j for j in range(n)])


def test_gain_updates_stay_within_the_token_budget(monkeypatch) -> None:
    m = HybridMF(n_factors=4, seed=1, rank_sample=0.0)
    calls: list[int] = []
    real = HybridMF._learn_gains

    def counting(self, *a, **kw):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(self, *a, **kw)

    monkeypatch.setattr(HybridMF, "_learn_gains", counting)
    monkeypatch.setattr(model_mod, "_GAIN_TOKEN_ITEMS", 10)  # 50 items cost 5 tokens per update (a token: 10 items scored)
    users = [f"u{j}" for j in range(2000)]
    first = np.random.default_rng(0).integers(0, 50, 2000)
    m.learn_batch(_clicks(users, [f"i{x}" for x in first], 1.0))
    assert not calls  # first events: no profile yet
    m.learn_batch(_clicks(users, [f"i{(x + 1) % 50}" for x in first], 10_000.0))  # 2,000 young positive events on known items
    budget = (model_mod._GAIN_TOKENS_MAX + model_mod._GAIN_TOKENS_PER_EVENT * 4000) / 5
    assert 0 < len(calls) <= budget < 2000
    m.learn_batch(_clicks(["heavy"] * 4000, [f"i{x % 50}" for x in range(4000)], 20_000.0))  # an established profile earns tokens
    calls.clear()
    m.learn_batch(_clicks(users[:10], [f"i{(x + 2) % 50}" for x in first[:10]], 30_000.0))  # a few young events: all learned
    assert len(calls) == 10
