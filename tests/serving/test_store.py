"""The model holder: ordering rules, rejections, catch-up, feedback latency."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry

from serving.bench import SyntheticModel
from serving.metrics import ServingMetrics
from serving.settings import ServingSettings
from serving.store import ModelStore


def _store(clock: float = 1000.0) -> ModelStore:
    return ModelStore(ServingSettings(), ServingMetrics(CollectorRegistry()), clock=lambda: clock)


def _sample(store: ModelStore, name: str, **labels: str) -> float | None:
    return store.metrics.registry.get_sample_value(name, labels)


def test_snapshot_then_deltas_swap_and_count() -> None:
    sm, store = SyntheticModel(10, 40, 4), _store()
    for u in sm.snapshot(max_bytes=1500):
        store.apply(u.encode())
    assert store.version == 1
    assert store.apply(sm.delta(5).encode()).swapped
    assert store.version == 2
    assert _sample(store, "reco_serving_model_swaps_total") == 2
    assert _sample(store, "reco_serving_model_version") == 2


def test_incomplete_snapshot_is_not_served() -> None:
    sm, store = SyntheticModel(10, 40, 4), _store()
    chunks = sm.snapshot(max_bytes=1500)
    for u in chunks[:-1]:
        assert store.apply(u.encode()).pending
    assert store.current is None
    assert store.apply(chunks[-1].encode()).swapped


def test_gap_is_rejected_and_healed_by_next_snapshot() -> None:
    sm, store = SyntheticModel(10, 40, 4), _store()
    store.apply(sm.snapshot()[0].encode())
    sm.delta(3)  # lost: version 2 never arrives
    res = store.apply(sm.delta(3).encode())
    assert res.reason == "gap" and store.version == 1
    assert store.apply(sm.delta(3).encode()).reason == "gap"
    assert _sample(store, "reco_serving_updates_rejected_total", reason="gap") == 2
    assert store.apply(sm.snapshot()[0].encode()).swapped and store.version == 5
    assert store.apply(sm.delta(3).encode()).swapped and store.version == 6


def test_corrupt_update_keeps_last_good_version() -> None:
    sm, store = SyntheticModel(10, 40, 4), _store()
    store.apply(sm.snapshot()[0].encode())
    good = store.current
    data = bytearray(sm.delta(3).encode())
    data[len(data) // 2 :] = b"\xff" * (len(data) - len(data) // 2)
    for bad in (bytes(data), b"", b"\x00" * 7, b"not safetensors at all"):
        assert store.apply(bad).reason == "corrupt"
    assert store.current is good
    assert _sample(store, "reco_serving_updates_rejected_total", reason="corrupt") == 4


def test_versions_only_move_forward() -> None:
    sm, store = SyntheticModel(10, 40, 4), _store()
    old = sm.snapshot()[0]
    store.apply(old.encode())
    store.apply(sm.delta(3).encode())
    assert store.apply(old.encode()).reason == "stale"
    d = sm.delta(3)
    store.apply(d.encode())
    assert store.apply(d.encode()).reason == "stale"
    assert store.version == 3


def test_catch_up_uses_last_complete_snapshot_and_later_deltas() -> None:
    sm = SyntheticModel(10, 40, 4)
    log = [u.encode() for u in sm.snapshot(max_bytes=1500)]
    log += [sm.delta(3).encode() for _ in range(3)]
    log += [u.encode() for u in sm.snapshot(max_bytes=1500)]
    log += [b"corrupt"]
    log += [sm.delta(3).encode() for _ in range(4)]
    tail_chunks = sm.snapshot(max_bytes=1500)
    log += [u.encode() for u in tail_chunks[:-1]]  # incomplete at the end
    live = _store()
    for data in log:
        live.apply(data)
    late = _store()
    swaps = late.catch_up(iter(log))
    assert swaps == 5  # snapshot 5 + deltas 6..9, nothing earlier
    assert late.version == live.version == 9
    assert late.current.recommend("u1", 10, False) == live.current.recommend("u1", 10, False)
    assert late.apply(tail_chunks[-1].encode()).swapped and late.version == 10


def test_feedback_latency_observed_per_covered_example() -> None:
    sm, store = SyntheticModel(10, 40, 4), _store(clock=1000.0)
    store.apply(sm.snapshot()[0].encode())
    store.apply(sm.delta(3, published=[["u1", "i1", 999.9], ["u2", "i2", 998.0]]).encode())
    assert _sample(store, "reco_serving_feedback_latency_seconds_count") == 2
    assert abs(_sample(store, "reco_serving_feedback_latency_seconds_sum") - 2.1) < 1e-6
    assert _sample(store, "reco_serving_feedback_latency_seconds_bucket", le="0.25") == 1


def test_readers_always_see_one_consistent_version_during_swaps() -> None:
    sm, store = SyntheticModel(50, 500, 8), _store()
    store.apply(sm.snapshot()[0].encode())
    errors: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            m = store.current
            a = m.recommend("u3", 20, False)
            b = m.recommend("u3", 20, False)
            if a != b or a.version != m.version:
                errors.append(f"{a.version} vs {b.version}")

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for n in range(60):
        store.apply((sm.snapshot()[0] if n % 20 == 19 else sm.delta(40, new_items=n % 3)).encode())
    stop.set()
    for t in threads:
        t.join()
    assert not errors and store.version == 61
