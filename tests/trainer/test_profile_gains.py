"""Per-profile-length gains: learned for profiles of 1-4 and of 5..knn_window events, 1 beyond."""

from __future__ import annotations

import numpy as np

from streamproc.examples import KIND_CLICK, ExampleBatch
from trainer.model import KNN_GAINS, MF_GAINS, HybridMF


def _clicks(users: list[str], items: list[str], t0: float) -> ExampleBatch:
    n = len(users)
    return ExampleBatch.build(event_ids=[f"e{t0}-{j}" for j in range(n)], user_ids=users, item_ids=items,
                              kinds=[KIND_CLICK] * n, targets=[float("nan")] * n, event_times=[t0 + j for j in range(n)],
                              published=[t0 + j for j in range(n)], processed=[t0 + j for j in range(n)])


def _model_with_history(window: int = 8) -> HybridMF:
    m = HybridMF(n_factors=4, seed=1, rank_sample=0.0, knn_window=window)
    rng = np.random.default_rng(0)
    m.learn_batch(_clicks([f"o{j}" for j in range(300)], [f"i{x}" for x in rng.integers(0, 40, 300)], 1.0))
    return m


def test_profiles_up_to_the_window_teach_their_gains_and_longer_ones_do_not(monkeypatch) -> None:
    m = _model_with_history(window=8)
    seen: list[int] = []
    real = HybridMF._learn_gains

    def recording(self, u, i, user, side):  # type: ignore[no-untyped-def]
        seen.append(self.cooc.events_of(u))
        return real(self, u, i, user, side)

    monkeypatch.setattr(HybridMF, "_learn_gains", recording)
    prior = m._GAINRR[4].copy()
    for n in range(200):  # one event per batch, so each is ranked with the profile before it
        m.learn_batch(_clicks([f"a{n % 10}"], [f"i{(n // 10 + 3 * (n % 10)) % 40}"], 10.0 + n))  # 20 new items each
    assert max(seen) == 8  # profiles of 9+ events do not teach
    assert len([k for k in seen if k < 5]) == 40  # 10 users x profiles of 1-4: every event
    assert 0 < len([k for k in seen if k >= 5]) <= 20  # 10 users x profiles of 5-8: about one in four of 40
    assert not np.array_equal(m._GAINRR[4], prior)  # the 5..window bucket learned


def test_the_learned_gains_apply_up_to_the_window_and_gain_1_beyond() -> None:
    m = _model_with_history(window=8)
    for n in range(6):
        m.learn_batch(_clicks(["mid"], [f"i{n}"], 10.0 + n))
    for n in range(30):
        m.learn_batch(_clicks(["long"], [f"i{(n * 3) % 40}"], 100.0 + n))
    assert m.cooc.events_of(m._umap["mid"]) == 6 and m.cooc.events_of(m._umap["long"]) == 30
    m._GAINRR[:] = 0.0
    m._GAINRR[4, KNN_GAINS.index(0.5) * len(MF_GAINS) + MF_GAINS.index(0.0)] = 1.0  # 5..8 events: knn 0.5, no factors
    assert m.knn_gains[4] == 0.5 and m.mf_gains[4] == 0.0
    np.testing.assert_array_equal(m._by_events(m.knn_gains), [*m.knn_gains, 0.5, 0.5, 0.5, 1.0])
    _, mid = m.ranking_inputs("mid")
    _, long = m.ranking_inputs("long")
    assert mid["mf_gain"] == 0.0 and long["mf_gain"] == 1.0
    assert np.isclose(mid["cand_vals"].max(), 0.5) and np.isclose(long["cand_vals"].max(), 1.0)
