"""Every stateful trainer component through the same checks (river's ``check_estimator`` pattern).

The shapes are :mod:`trainer.protocols`; a component joins by adding a :class:`Case`. The checks:
it conforms to its protocols; its state is JSON-able meta plus numeric arrays; the state survives the
real checkpoint store and the rebuilt component continues as the original would; the same seed gives
the same results; models clone, learn and predict. ``tests/trainer/test_contract.py`` goes deeper on
``HybridMF`` configurations.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamproc.examples import KIND_CLICK, KIND_COMMENT, KIND_RATING, ExampleBatch
from trainer.checkpoint import CheckpointStore
from trainer.drift import DriftMonitor
from trainer.feedback import ItemFeedback
from trainer.model import HybridMF
from trainer.prequential import Prequential
from trainer.protocols import Monitor, OnlineModel, Stateful
from trainer.replay import ReplayBuffer

TEXT_DIM = 8


def stream(seed: int, n: int = 400, size: int = 100) -> list[ExampleBatch]:
    """Ratings, clicks and comments (half of them rated) from 30 users on 50 items, in batches."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice([KIND_RATING, KIND_CLICK, KIND_COMMENT], n, p=[0.6, 0.25, 0.15]).astype(np.uint8)
    targets = rng.integers(1, 11, n) / 2.0
    targets[kinds == KIND_CLICK] = np.nan
    targets[(kinds == KIND_COMMENT) & (rng.random(n) < 0.5)] = np.nan
    emb = rng.standard_normal((n, TEXT_DIM)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    users = [f"u{x}" for x in rng.integers(0, 30, n)]
    items = [f"i{x}" for x in rng.integers(0, 50, n)]
    times = 1e9 + np.arange(n) * 2.0
    out = []
    for s in range(0, n, size):
        sl = slice(s, s + size)
        k = kinds[sl]
        out.append(ExampleBatch.build(event_ids=[f"e{j}" for j in range(s, s + len(k))], user_ids=users[sl], item_ids=items[sl],
                                      kinds=k, targets=targets[sl], event_times=times[sl], published=times[sl],
                                      processed=times[sl], embeddings=emb[sl],
                                      emb_rows=np.where(k == KIND_COMMENT, np.arange(len(k)), -1)))
    return out


def _ids(values: list[str]) -> np.ndarray:
    return np.array([int(v[1:]) for v in values], np.int32)


def _learn(m: HybridMF, b: ExampleBatch) -> Any:
    return m.learn_batch(b)


def _replay(buf: ReplayBuffer, b: ExampleBatch) -> Any:
    r = b.records
    buf.add_many(users=_ids(b.user_ids), items=_ids(b.item_ids), kinds=r["kind"], targets=r["target"],
                 weights=np.ones(len(b), np.float32), times=r["event_time"])
    return buf.sample(20)


def _predictions(b: ExampleBatch) -> np.ndarray:
    """A fixed, data-derived prediction per example (the monitors' other input)."""
    t = b.records["target"].astype(np.float64)
    return np.where(np.isnan(t), 0.7, np.clip(t + 0.5, 0.5, 5.0))


def _prequential(p: Prequential, b: ExampleBatch) -> Any:
    p.update_batch(b, _predictions(b))
    return p.get()


def _drift(d: DriftMonitor, b: ExampleBatch) -> Any:
    return d.update_batch(b, _predictions(b)), d.get()


def _feedback(f: ItemFeedback, b: ExampleBatch) -> Any:
    r = b.records
    rows = _ids(b.item_ids)
    f.update(rows, r["kind"], r["target"].astype(np.float64), _predictions(b))
    return f.columns(np.arange(50))


@dataclass(frozen=True)
class Case:
    make: Callable[[int], Any]  # seed -> a fresh component
    feed: Callable[[Any, ExampleBatch], Any]  # one batch in, something observable out
    protocols: tuple[type, ...] = (Stateful,)
    seeded: bool = False  # a different seed gives different results
    exact: bool = True  # a rebuilt component continues exactly as the original (else: same state only)


CASES = {
    "HybridMF": Case(lambda s: HybridMF(n_factors=8, text_dim=TEXT_DIM, replay_size=200, replay_ratio=0.5, seed=s), _learn,
                     (Stateful, OnlineModel), seeded=True),
    "HybridMF-per-user-replay": Case(lambda s: HybridMF(n_factors=4, text_dim=TEXT_DIM, replay_size=100, replay_ratio=1.0,
                                                        replay_policy="per_user", seed=s), _learn,
                                     (Stateful, OnlineModel), seeded=True),
    "ReplayBuffer-reservoir": Case(lambda s: ReplayBuffer(size=60, policy="reservoir", seed=s), _replay, seeded=True),
    "ReplayBuffer-per-user": Case(lambda s: ReplayBuffer(size=60, policy="per_user", seed=s), _replay, seeded=True),
    "Prequential": Case(lambda s: Prequential(window=50), _prequential, (Stateful, Monitor)),
    # river's ADWIN keeps its buckets in a Rust object with no public state: rebuilt by re-feeding the
    # stored recent values, it sees the same window, not the same buckets (trainer/drift.py)
    "DriftMonitor": Case(lambda s: DriftMonitor(block=5, history=200, seed=s), _drift, (Stateful, Monitor), exact=False),
    "ItemFeedback": Case(lambda s: ItemFeedback(recent_comments=3, slow_comments=10, min_comments=2), _feedback),
}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    return CASES[request.param]


def run(c: Case, obj: Any, batches: list[ExampleBatch]) -> list[Any]:
    return [c.feed(obj, b) for b in batches]


def same(a: Any, b: Any) -> bool:
    """Deep equality for what components return: arrays (NaN equal to NaN), dicts, lists, scalars."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype.names or b.dtype.names:
            return a.dtype == b.dtype and all(same(a[f], b[f]) for f in a.dtype.names or ())
        return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return True
    return bool(a == b)


def same_state(a: Stateful, b: Stateful) -> bool:
    (ma, aa), (mb, ab) = a.state(), b.state()
    return json.dumps(ma, sort_keys=True) == json.dumps(mb, sort_keys=True) and same(aa, ab)


def test_conforms_to_its_protocols(case: Case) -> None:
    obj = case.make(1)
    for proto in case.protocols:
        assert isinstance(obj, proto), f"{type(obj).__name__} is not a {proto.__name__}"


def test_state_is_json_meta_and_numeric_arrays(case: Case) -> None:
    obj = case.make(1)
    run(case, obj, stream(0)[:2])
    meta, arrays = obj.state()
    assert isinstance(meta, dict) and isinstance(arrays, dict)
    json.dumps(meta, allow_nan=True)  # no default=: numpy scalars or arrays in meta would raise
    for name, arr in arrays.items():
        assert isinstance(name, str) and isinstance(arr, np.ndarray), name
        assert arr.dtype.kind in "biuf" or arr.dtype.names, f"{name}: {arr.dtype} is not storable as a tensor"


def test_state_round_trip_through_the_checkpoint_store(case: Case, tmp_path: Path) -> None:
    batches = stream(3)
    obj = case.make(5)
    run(case, obj, batches[:2])
    store = CheckpointStore(tmp_path)
    store.save(version=1, offsets={}, components={"c": obj.state()}, learned_ids=[])
    ck = store.latest()
    assert ck is not None
    copy = type(obj).from_state(*ck.components["c"])
    assert type(copy) is type(obj) and same_state(copy, obj)
    if case.exact:  # learning/monitoring continues identically: same RNG, buffers, counters
        assert same(run(case, copy, batches[2:]), run(case, obj, batches[2:]))
        assert same_state(copy, obj)


def test_seeding_is_deterministic(case: Case) -> None:
    batches = stream(2)
    a, b = case.make(7), case.make(7)
    assert same(run(case, a, batches), run(case, b, batches)) and same_state(a, b)
    if case.seeded:
        c = case.make(8)
        assert not same(run(case, c, batches), run(case, case.make(7), batches))


def test_models_clone_learn_and_predict(case: Case) -> None:
    if OnlineModel not in case.protocols:
        pytest.skip("not a model")
    batches = stream(4)
    m = case.make(3)
    preds = np.concatenate(run(case, m, batches))
    assert len(preds) == sum(len(b) for b in batches) and np.isfinite(preds).all()
    assert m.rating_min <= m.predict_one("u1", "i1") <= m.rating_max
    assert m.rating_min <= m.predict_one("nobody", "nothing") <= m.rating_max
    # test then train: a rating's prediction is made before it is learned
    one = ExampleBatch.build(event_ids=["x"], user_ids=["u2"], item_ids=["i3"], kinds=[KIND_RATING], targets=[5.0],
                             event_times=[2e9], published=[2e9], processed=[2e9])
    before = m.predict_one("u2", "i3")
    assert m.learn_batch(one)[0] == pytest.approx(before, abs=1e-5)
    assert m.predict_one("u2", "i3") > before  # and then learned: moved towards 5
    c = m.clone()
    assert type(c) is type(m) and c.get_params() == m.get_params()
    assert same_state(c, case.make(3))  # fresh: nothing learned
    assert same(run(case, c, batches), run(case, case.make(3), batches))
    header, tensors = m.export(full=True)
    assert isinstance(header, dict) and all(isinstance(t, np.ndarray) for t in tensors.values())
