"""river ``check_estimator``-style contract: every model configuration through the same checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load, save

from streamproc.examples import KIND_CLICK, KIND_COMMENT, KIND_RATING, ExampleBatch
from trainer.model import HybridMF

CONFIGS = {
    "default": {},
    "small-replay-reservoir": {"n_factors": 4, "replay_ratio": 0.5, "replay_size": 100},
    "per-user-replay-ttl": {"n_factors": 8, "replay_ratio": 1.0, "replay_policy": "per_user", "row_ttl_s": 500.0},
    "recency-text": {"n_factors": 16, "text_dim": 8, "replay_ratio": 0.3, "replay_policy": "recency"},
}


def stream(seed: int, n: int = 600, dim: int = 384, t0: float = 1e9) -> list[ExampleBatch]:
    """Mixed ratings, clicks and comments (some rated), in batches of 100."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice([KIND_RATING, KIND_CLICK, KIND_COMMENT], n, p=[0.6, 0.25, 0.15])
    targets = rng.integers(1, 11, n) / 2.0
    targets[kinds == KIND_CLICK] = np.nan
    targets[(kinds == KIND_COMMENT) & (rng.random(n) < 0.5)] = np.nan
    emb = rng.standard_normal((n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    users = [f"u{x}" for x in rng.integers(0, 40, n)]
    items = [f"i{x}" for x in rng.integers(0, 60, n)]
    times = t0 + np.arange(n) * 2.0
    out = []
    for s in range(0, n, 100):
        sl = slice(s, s + 100)
        k = kinds[sl]
        rows = np.where(k == KIND_COMMENT, np.arange(len(k)), -1)
        out.append(ExampleBatch.build(event_ids=[""] * len(k), user_ids=users[sl], item_ids=items[sl], kinds=k,
                                      targets=targets[sl], event_times=times[sl], published=times[sl],
                                      processed=times[sl], embeddings=emb[sl], emb_rows=rows))
    return out


def run(model: HybridMF, batches: list[ExampleBatch]) -> np.ndarray:
    return np.concatenate([model.learn_batch(b) for b in batches])


@pytest.fixture(params=sorted(CONFIGS))
def params(request: pytest.FixtureRequest) -> dict:
    return CONFIGS[request.param]


def dim_of(params: dict) -> int:
    return params.get("text_dim", 384)


def test_learn_and_predict(params: dict) -> None:
    m = HybridMF(**params)
    preds = run(m, stream(0, dim=dim_of(params)))
    assert preds.dtype == np.float64 and len(preds) == 600 and np.isfinite(preds).all()
    p = m.predict_one("u1", "i1")
    assert m.rating_min <= p <= m.rating_max
    assert m.n_users > 0 and m.n_items > 0
    assert m.rating_min <= m.predict_one("nobody", "nothing") <= m.rating_max


def test_clone_is_fresh_with_same_params(params: dict) -> None:
    m = HybridMF(**params)
    run(m, stream(0, dim=dim_of(params)))
    c = m.clone()
    assert c.get_params() == m.get_params()
    assert c.n_users == 0 and c.n_items == 0
    assert np.array_equal(run(c, stream(1, dim=dim_of(params))), run(HybridMF(**params), stream(1, dim=dim_of(params))))


def test_seeding_is_deterministic(params: dict) -> None:
    a = run(HybridMF(**params, seed=7), stream(2, dim=dim_of(params)))
    b = run(HybridMF(**params, seed=7), stream(2, dim=dim_of(params)))
    c = run(HybridMF(**params, seed=8), stream(2, dim=dim_of(params)))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_state_round_trip_through_safetensors_and_json(params: dict) -> None:
    batches = stream(3, dim=dim_of(params))
    m = HybridMF(**params)
    run(m, batches[:3])
    meta, arrays = m.state()
    meta2 = json.loads(json.dumps(meta))
    arrays2 = load(save(arrays))
    r = HybridMF.from_state(meta2, arrays2)
    assert r.get_params() == m.get_params()
    assert (r.n_users, r.n_items) == (m.n_users, m.n_items)
    assert r.predict_one("u1", "i2") == m.predict_one("u1", "i2")
    # learning continues identically: same RNG, replay buffer, counters
    assert np.array_equal(run(r, batches[3:]), run(m, batches[3:]))
    assert r.export(full=True)[0] == m.export(full=True)[0]


def test_export_follows_the_update_contract(params: dict) -> None:
    from trainer.updates import ModelUpdate

    m = HybridMF(**params)
    run(m, stream(4, dim=dim_of(params)))
    header, tensors = m.export(full=True)
    upd = ModelUpdate.decode(ModelUpdate(header={"version": 1, "kind": "snapshot", **header}, tensors=tensors).encode())
    assert len(upd.header.user_ids) == m.n_users and len(upd.header.item_ids) == m.n_items
    k = m.n_factors
    assert upd.tensors["user_factors"].shape == (m.n_users, k) and upd.tensors["item_factors"].shape == (m.n_items, k)
    # serving's formula reproduces predict_one
    u, i = upd.header.user_ids.index("u3"), upd.header.item_ids.index("i5")
    score = header["global_mean"] + tensors["user_bias"][u] + tensors["item_bias"][i] + tensors["user_factors"][u] @ tensors["item_factors"][i]
    expected = m.predict_one("u3", "i5")
    assert np.clip(score, m.rating_min, m.rating_max) == pytest.approx(expected, abs=1e-4)


def test_bad_params_are_rejected() -> None:
    with pytest.raises(ValueError, match="replay_policy"):
        HybridMF(replay_policy="lifo")
    with pytest.raises(ValueError, match="n_factors"):
        HybridMF(n_factors=0)
    with pytest.raises(ValueError, match="rating_min"):
        HybridMF(rating_min=5, rating_max=1)
