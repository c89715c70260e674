"""Checkpoints: atomic round trip, keep-2 retention, fallback past a damaged newest one, id log."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamproc.examples import RECORD_DTYPE
from trainer.checkpoint import CheckpointError, CheckpointStore


def _components(x: float) -> dict:
    rec = np.zeros(3, RECORD_DTYPE)
    rec["target"] = [1.0, 2.0, x]
    return {
        "model": ({"k": 2, "ids": ["a", "b"]}, {"w": np.full((2, 2), x, np.float32), "recs": rec,
                                               "names": np.array(["u1", "u2"])}),
        "drift": ({"n": 5}, {}),
    }


def test_round_trip_keeps_arrays_records_strings_and_meta(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(version=7, offsets={"t.examples:0": 42}, components=_components(3.0), info={"examples_learned": 9})
    ck = store.latest()
    assert ck is not None and ck.version == 7 and ck.offsets == {"t.examples:0": 42}
    meta, arrays = ck.components["model"]
    assert meta == {"k": 2, "ids": ["a", "b"]}
    np.testing.assert_array_equal(arrays["w"], np.full((2, 2), 3.0, np.float32))
    assert arrays["recs"].dtype == RECORD_DTYPE and arrays["recs"]["target"].tolist() == [1.0, 2.0, 3.0]
    assert arrays["names"].tolist() == ["u1", "u2"]
    assert ck.components["drift"] == ({"n": 5}, {}) and ck.info["examples_learned"] == 9


def test_keeps_last_two_and_falls_back_when_newest_is_damaged(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    for v in range(1, 5):
        store.save(version=v, offsets={"x:0": v * 10}, components=_components(float(v)))
    assert [p.name for p in store.paths()] == ["ckpt-000000000003", "ckpt-000000000004"]
    (store.paths()[-1] / "arrays.safetensors").write_bytes(b"garbage")
    ck = store.latest()
    assert ck is not None and ck.version == 3 and ck.offsets == {"x:0": 30}
    with pytest.raises(CheckpointError, match="damaged"):
        store.load(store.paths()[-1])


def test_no_checkpoint_and_stale_temp_dirs(tmp_path: Path) -> None:
    assert CheckpointStore(tmp_path).latest() is None
    stale = tmp_path / ".tmp-ckpt-000000000001-1"
    stale.mkdir()
    import os
    os.utime(stale, (0, 0))  # left behind by a crash long ago
    store = CheckpointStore(tmp_path)
    assert not stale.exists() and store.latest() is None


def test_learned_ids_are_appended_before_each_checkpoint(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(version=1, offsets={}, components=_components(1.0), learned_ids=["e1", "e2"])
    store.save(version=2, offsets={}, components=_components(2.0), learned_ids=[])
    store.save(version=3, offsets={}, components=_components(3.0), learned_ids=["e3"])
    assert store.learned_ids() == ["e1", "e2", "e3"]
    assert (tmp_path / "learned_ids.log").read_text() == "e1\ne2\ne3\n"


def test_keep_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keep"):
        CheckpointStore(tmp_path, keep=0)
