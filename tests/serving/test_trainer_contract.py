"""The trainer's real export, wrapped as the trainer's worker does, is served with the same scores
the quality bench measures (``score_items`` on ``HybridMF.ranking_inputs``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from serving.metrics import ServingMetrics
from serving.settings import ServingSettings
from serving.store import ModelStore
from streamproc.examples import KIND_CLICK
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
    store = ModelStore(ServingSettings(), ServingMetrics(CollectorRegistry()))
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


def test_a_snapshot_in_many_chunks_serves_every_candidate_through_its_whole_item_list() -> None:
    """A snapshot's candidates index the items of all its chunks joined (``snapshot_items``), and
    the trainer's item rows include dead ones (an erased item): served scores are still the bench's."""
    from trainer.updates import UpdateHeader, chunk_update

    m = HybridMF(n_factors=4, rank_mf=1.0)
    rng = np.random.default_rng(7)
    for n in range(1500):
        m.learn_one(f"u{rng.integers(0, 60)}", f"i{rng.zipf(1.4) % 90}", float(rng.integers(1, 6)), event_time=1000.0 + n)
    assert m.forget(items=["i3"])[1] == ["i3"]
    head, tensors = m.export(full=True)
    space = head.pop("candidate_item_ids")
    assert "" in space  # the erased item's row: named by no candidate
    header = UpdateHeader(version=4, kind="snapshot", global_mean=head["global_mean"], user_ids=head["user_ids"],
                          item_ids=head["item_ids"], ranking=m.rank_weights, deltas_from=0)
    parts = chunk_update(header, tensors, 6_000, candidate_space=space)
    assert len(parts) > 4 and {p.header.snapshot_items for p in parts} == {len(head["item_ids"])}
    assert all(p.header.candidate_item_ids is None for p in parts)
    store = ModelStore(ServingSettings(), ServingMetrics(CollectorRegistry()))
    results = [store.apply(p.encode()) for p in reversed(parts)]  # chunks in any order
    assert results[-1].swapped
    for user in ("u0", "u7", "u33"):
        expected = _bench_scores(m, user)
        assert store.current.score(user, list(expected)) == pytest.approx(list(expected.values()), abs=1e-5)


class _Sent:
    def __init__(self) -> None:
        self.values: list[bytes] = []

    def send(self, topic: str, value: bytes) -> Any:
        self.values.append(value)
        return self

    def get(self, timeout: float | None = None) -> Any:
        self.offset = len(self.values) - 1  # kafka's RecordMetadata
        return self

    def flush(self, timeout: float | None = None) -> None:
        pass


def test_a_delta_split_into_parts_keeps_every_candidate_and_carries_expiries(tmp_path: Any) -> None:
    from trainer.worker import TrainerWorker

    s = ServingSettings(kafka_bootstrap="127.0.0.1:1", topic_prefix="t.", checkpoint_dir=str(tmp_path), max_message_bytes=10_000,
                 row_ttl_s=1000.0)
    w = TrainerWorker(s, registry=CollectorRegistry())
    w._producer = w._snap_producer = sent = _Sent()
    w.active = True
    m = HybridMF(n_factors=4, row_ttl_s=1000.0, rank_sample=0.0)
    w.model = m
    from trainer.drift import DriftMonitor
    from trainer.prequential import Prequential

    w.prequential, w.drift = Prequential(), DriftMonitor()
    from streamproc.examples import ExampleBatch

    def feed(users: list[str], items: list[str], t0: float) -> None:
        n = len(users)
        w.learn(ExampleBatch.build(event_ids=[f"e{t0}-{k}" for k in range(n)], user_ids=users, item_ids=items, kinds=[0] * n,
                                   targets=[5.0] * n, event_times=[t0 + k for k in range(n)], published=[t0] * n, processed=[t0] * n))

    feed(["old-user"], ["old-item"], 0.0)
    w.publish_snapshot(wait=True)
    # many new items and users in one delta: it must be split, and users' candidates name new items
    feed([f"u{k % 40}" for k in range(400)], [f"new{k % 97}" for k in range(400)], 5000.0)
    sent.values.clear()
    w.publish_delta()
    parts = [ModelUpdate.decode(v) for v in sent.values]
    assert len(parts) > 1
    assert parts[0].header.expired_item_ids == ["old-item"] and parts[0].header.expired_user_ids == ["old-user"]
    store = ModelStore(ServingSettings(), ServingMetrics(CollectorRegistry()))
    head, tensors = HybridMF(n_factors=4).export(full=True)  # an empty base to chain the parts onto
    base = ModelUpdate({**head, "version": parts[0].header.base_version, "kind": "snapshot", "chunk": 0, "chunks": 1}, tensors)
    assert store.apply(base.encode()).swapped
    for p in parts:
        assert store.apply(p.encode()).swapped
    model = store.current
    for user in ("u0", "u7", "u39"):
        expected = _bench_scores(m, user)
        assert model.score(user, list(expected)) == pytest.approx(list(expected.values()), abs=1e-5)


def test_a_snapshot_computed_in_slices_between_batches_is_the_snapshot_computed_at_once(tmp_path: Any, monkeypatch: Any) -> None:
    import trainer.worker as tw
    from streamproc.examples import ExampleBatch
    from trainer.drift import DriftMonitor
    from trainer.prequential import Prequential
    from trainer.settings import TrainerSettings

    def worker(directory: str) -> tuple[tw.TrainerWorker, _Sent]:
        s = TrainerSettings(kafka_bootstrap="127.0.0.1:1", topic_prefix="t.", checkpoint_dir=directory, max_message_bytes=20_000)
        w = tw.TrainerWorker(s, registry=CollectorRegistry())
        w._producer = w._snap_producer = sent = _Sent()
        w.model, w.prequential, w.drift, w.active = HybridMF(n_factors=4, rank_sample=0.0), Prequential(), DriftMonitor(), True
        w._in_sync = True  # a fresh model: deltas from version 0 are the truth
        rng = np.random.default_rng(3)
        users, items = [f"u{k}" for k in rng.integers(0, 300, 3000)], [f"i{k}" for k in rng.zipf(1.5, 3000) % 200]
        w.learn(ExampleBatch.build(event_ids=[f"e{k}" for k in range(3000)], user_ids=users, item_ids=items, kinds=[0] * 3000,
                                   targets=[4.0] * 3000, event_times=[float(k) for k in range(3000)], published=[1.0] * 3000,
                                   processed=[1.0] * 3000))
        w.publish_delta()
        sent.values.clear()
        return w, sent

    at_once, sent_once = worker(str(tmp_path / "a"))
    assert at_once.publish_snapshot(wait=True) > 1
    monkeypatch.setattr(tw, "_CANDIDATE_STEP", 7)
    monkeypatch.setattr(tw, "_CANDIDATE_SLICE_S", 0.0)
    sliced, sent_sliced = worker(str(tmp_path / "b"))
    sliced.publish_snapshot()
    turns = 0
    while sliced._snap_job is not None:  # each loop turn computes one slice (no time budget left: one step)
        sliced.advance_snapshot(0.0)
        turns += 1
    assert turns >= 250 // 7 and sliced._snap_thread is not None
    sliced._snap_thread.join()
    a = [ModelUpdate.decode(v) for v in sent_once.values]
    b = [ModelUpdate.decode(v) for v in sent_sliced.values]
    assert [u.header.user_ids for u in a] == [u.header.user_ids for u in b] and len(a) > 1
    for x, y in zip(a, b, strict=True):
        assert x.header.snapshot_items == y.header.snapshot_items
        np.testing.assert_array_equal(x.tensors["user_candidates"], y.tensors["user_candidates"])
        np.testing.assert_array_equal(x.tensors["user_candidate_scores"], y.tensors["user_candidate_scores"])
