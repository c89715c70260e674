"""Drift monitor: fires on an abrupt shift, stays quiet on a stationary stream (seeded)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load, save

from streamproc.examples import KIND_COMMENT, KIND_RATING, ExampleBatch
from trainer.drift import DriftMonitor


def batch(kinds: np.ndarray, targets: np.ndarray) -> ExampleBatch:
    n = len(kinds)
    return ExampleBatch.build(event_ids=[""] * n, user_ids=["u"] * n, item_ids=["i"] * n, kinds=kinds, targets=targets,
                              event_times=np.zeros(n), published=np.zeros(n), processed=np.zeros(n))


def ratings(rng: np.random.Generator, n: int, mean: float) -> np.ndarray:
    return np.clip(np.round(rng.normal(mean, 1.0, n) * 2) / 2, 0.5, 5.0)


def feed(mon: DriftMonitor, kinds: np.ndarray, targets: np.ndarray, preds: np.ndarray, size: int = 500) -> list[dict]:
    found = []
    for s in range(0, len(kinds), size):
        found += mon.update_batch(batch(kinds[s : s + size], targets[s : s + size]), preds[s : s + size])
    return found


@pytest.mark.parametrize("detector", ["adwin", "page_hinkley"])
def test_quiet_on_a_stationary_stream(detector: str) -> None:
    rng = np.random.default_rng(0)
    y = ratings(rng, 20_000, 3.5)
    preds = np.clip(y + rng.normal(0, 0.8, len(y)), 0.5, 5.0)
    assert feed(DriftMonitor(detector), np.zeros(len(y), np.uint8), y, preds) == []


@pytest.mark.parametrize("detector", ["adwin", "page_hinkley"])
def test_fires_soon_after_an_abrupt_shift(detector: str) -> None:
    rng = np.random.default_rng(1)
    y = np.r_[ratings(rng, 10_000, 3.8), ratings(rng, 5_000, 1.7)]
    preds = np.clip(np.r_[y[:10_000] + rng.normal(0, 0.8, 10_000), np.full(5_000, 3.8)], 0.5, 5.0)  # stale model after
    found = feed(DriftMonitor(detector), np.zeros(len(y), np.uint8), y, preds)
    err = [d for d in found if d["signal"] == "error"]
    assert err and all(10_000 <= d["index"] < 12_000 for d in err[:1])
    assert all(d["index"] >= 10_000 for d in found)
    assert err[0]["evidence"]["detector"] == detector


def test_falling_error_is_not_a_drift() -> None:
    rng = np.random.default_rng(2)
    y = ratings(rng, 10_000, 3.5)
    noise = np.r_[np.full(5_000, 1.5), np.full(5_000, 0.3)] * rng.standard_normal(10_000)
    found = feed(DriftMonitor(), np.zeros(len(y), np.uint8), y, np.clip(y + noise, 0.5, 5.0))
    assert [d for d in found if d["signal"] == "error"] == []


def test_sentiment_signal_on_unrated_comments() -> None:
    rng = np.random.default_rng(3)
    n = 8_000
    kinds = np.full(n, KIND_COMMENT, np.uint8)
    sentiment = np.r_[rng.normal(4.0, 0.5, n // 2), rng.normal(2.0, 0.5, n // 2)]
    found = feed(DriftMonitor(), kinds, np.full(n, np.nan), sentiment)
    assert [d["signal"] for d in found] == ["sentiment"] and found[0]["index"] >= n // 2


def test_state_is_json_and_rebuilds() -> None:
    rng = np.random.default_rng(4)
    y = ratings(rng, 3_000, 3.5)
    mon = DriftMonitor(history=1000)
    feed(mon, np.full(len(y), KIND_RATING, np.uint8), y, np.full(len(y), 3.5))
    meta, arrays = mon.state()
    copy = DriftMonitor.from_state(json.loads(json.dumps(meta)), load(save(arrays)))
    assert copy.detections == mon.detections and copy.get() == mon.get()
    shifted = ratings(rng, 3_000, 1.0)
    a = feed(mon, np.zeros(3_000, np.uint8), shifted, np.full(3_000, 3.5))
    b = feed(copy, np.zeros(3_000, np.uint8), shifted, np.full(3_000, 3.5))
    assert {d["signal"] for d in a} == {d["signal"] for d in b} == {"error", "rating"}


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="detector"):
        DriftMonitor("ddm")
    with pytest.raises(ValueError, match="block"):
        DriftMonitor(block=0)


def test_one_users_burst_of_low_ratings_is_not_a_rating_drift_but_a_lasting_shift_is() -> None:
    rng = np.random.default_rng(5)
    burst = np.r_[ratings(rng, 10_000, 3.6), ratings(rng, 400, 1.2), ratings(rng, 10_000, 3.6)]
    kinds = np.full(len(burst), KIND_RATING, np.uint8)
    found = feed(DriftMonitor(), kinds, burst, burst)  # perfect predictions: only the level moves
    assert [d for d in found if d["signal"] == "rating"] == []
    lasting = np.r_[ratings(rng, 10_000, 3.6), ratings(rng, 10_000, 2.8)]
    found = [d for d in feed(DriftMonitor(), kinds[: len(lasting)], lasting, lasting) if d["signal"] == "rating"]
    assert len(found) == 1 and 10_000 <= found[0]["index"] < 12_000
    assert found[0]["evidence"]["confirmed_shift"] == pytest.approx(-0.8, abs=0.2)
    # without the confirmation and the minimum shift, the burst alarms (what the defaults prevent)
    raw = feed(DriftMonitor(min_shift=0.0, confirm_blocks=0), kinds[: len(burst)], burst, burst)
    assert [d for d in raw if d["signal"] == "rating"]


def test_dict_state_of_older_checkpoints_still_loads() -> None:
    rng = np.random.default_rng(5)
    y = ratings(rng, 3_000, 3.5)
    mon = DriftMonitor(history=1000)
    feed(mon, np.full(len(y), KIND_RATING, np.uint8), y, np.full(len(y), 3.5))
    meta, arrays = mon.state()
    text, tensors = json.dumps(meta), save(arrays)
    # the layout state() had before it returned (meta, arrays): the recent values inline
    old = {k: v for k, v in meta.items() if k != "signals"}
    old["values"] = {s: arrays[f"values_{s}"].tolist() for s in meta["signals"]}
    old_text = json.dumps(old)
    shifted = ratings(rng, 3_000, 1.0)
    # rebuilt from the current (meta, arrays) state
    want = feed(DriftMonitor.from_state(json.loads(text), load(tensors)), np.zeros(3_000, np.uint8), shifted, np.full(3_000, 3.5))
    assert {d["signal"] for d in want} == {"error", "rating"}
    # the second: as a checkpoint of format 1 restores it (trainer.checkpoint unwraps {"form": "dict", "meta": ...})
    for copy in (DriftMonitor.from_state(json.loads(old_text)), DriftMonitor.from_state(json.loads(old_text), {})):
        assert copy.get() == mon.get()
        got = feed(copy, np.zeros(3_000, np.uint8), shifted, np.full(3_000, 3.5))
        assert [(d["signal"], d["index"]) for d in got] == [(d["signal"], d["index"]) for d in want]
