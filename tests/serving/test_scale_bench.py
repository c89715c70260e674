"""``reco bench scale``: the synthetic stream, the verdicts, and the quick run end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from serving.bench.scale import TARGETS, _verdicts, synthetic_stream

ROOT = Path(__file__).resolve().parents[2]


def test_stream_has_every_user_and_a_popularity_head() -> None:
    s = synthetic_stream(300, 500, 6000, seed=3)
    assert len(set(s["users"])) == 300
    counts = sorted(Counter(s["items"]).values(), reverse=True)
    assert counts[0] > 20 * np.median(counts)  # Zipf-like: a head far above the typical item
    rated = ~np.isnan(s["targets"])
    assert 0.3 < rated.mean() < 0.7 and set(np.unique(s["targets"][rated] * 2)) <= set(range(1, 11))
    assert np.all(np.diff(s["times"]) > 0)


def test_stream_is_seeded() -> None:
    a, b = synthetic_stream(50, 40, 400, seed=1), synthetic_stream(50, 40, 400, seed=1)
    assert a["items"] == b["items"] and a["users"] == b["users"]
    assert synthetic_stream(50, 40, 400, seed=2)["items"] != a["items"]


@pytest.mark.parametrize("kw, name", [({"users": 10, "items": 5, "events": 3}, "events"), ({"users": 0, "items": 5, "events": 3}, "users")])
def test_stream_rejects_bad_sizes(kw: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        synthetic_stream(**kw)


def _result(ready: float, p99_100k: float, traffic: float) -> dict:
    size = {"users": 1_000_000, "items": 100_000, "trainer_memory_gib_per_1m_users": 0.4, "replica_ready_s": ready,
            "model_updates_bytes_per_s_per_replica": traffic}
    return {"sizes": [size], "serving": [{"items": 100_000, "serving_p99_ms": p99_100k}], "feedback": {"p99_s": 1.0}}


def test_verdicts_follow_the_figures() -> None:
    good = _verdicts(_result(ready=10.0, p99_100k=5.0, traffic=1.5e6))
    bad = _verdicts(_result(ready=45.0, p99_100k=12.0, traffic=3e6))
    for key in ("replica_ready", "serving_p99_100k_items", "model_updates_traffic_per_replica"):
        assert good[f"meets_{key}"] is True and bad[f"meets_{key}"] is False
    assert good["replica_ready"] == 10.0 and bad["model_updates_traffic_per_replica"] == 3.0
    assert good["meets_serving_p99_1m_items"] is None  # not measured: neither met nor failed
    assert good["targets"] == TARGETS
    assert good["meets_feedback_p99_2000_events_per_s"] is True
    missed = _result(ready=10.0, p99_100k=5.0, traffic=1.5e6)
    missed["feedback"] = {"p99_s": None, "probes": 0, "probes_missed": 3, "probes_not_run": 17, "size": "1,000,000 users"}
    v = _verdicts(missed)
    assert v["meets_feedback_p99_2000_events_per_s"] is False and "20 of 20 probes not visible" in v["feedback_p99_2000_events_per_s_at"]


@pytest.mark.slow
@pytest.mark.integration
def test_quick_run_end_to_end(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECO_")}
    out = tmp_path / "plots"
    proc = subprocess.run([sys.executable, "-m", "streamproc.cli", "bench", "scale", "--quick", "--json",
                           "--out", str(out)], cwd=ROOT, env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout)
    assert "reco bench scale" in proc.stderr  # the progress bar
    small, big = r["sizes"]
    assert big["user_rows"] > small["user_rows"] > 0
    assert big["snapshot_bytes"] > small["snapshot_bytes"] > 0
    assert big["checkpoint_bytes"] > small["checkpoint_bytes"] > 0
    for size in r["sizes"]:
        assert size["trainer_events_per_s"] > 0 and size["replica_version"] == size["final_version"] > size["snapshot_version"]
        # the new replica read one snapshot from model-snapshots and only the deltas after it from model-updates
        assert size["replica_snapshot_loads"] == 1 and size["replica_first_version"] == size["snapshot_version"]
        assert size["snapshot_bytes"] <= size["replica_snapshot_bytes_read"] < size["snapshot_bytes"] + 3 * 1_000_000  # + a fetch's overshoot
        assert 0 < size["replica_delta_bytes_read"] <= size["delta_bytes_per_s"] * size["tail_seconds_of_stream"] * 1.01
        assert size["snapshot_stall_s"] <= size["snapshot_publish_s"]
        assert 0 < size["serving_p50_ms"] <= size["serving_p99_ms"]
    for key in TARGETS:
        assert key in r["targets"]
    meets = [k for k in r if k.startswith("meets_")]
    assert len(meets) == len(TARGETS)
    for k in meets:
        value = r[k[len("meets_"):]]
        assert r[k] is None if value is None else isinstance(r[k], bool)
    assert r["replica_ready"] is not None and r["meets_replica_ready"] == (r["replica_ready"] <= TARGETS["replica_ready_s"])
    # feedback latency: the whole loop, its trainer restored from the largest size's checkpoint
    fb = r["feedback"]
    assert fb["users"] == big["users"] and fb["probes"] + fb["probes_missed"] + fb["probes_not_run"] == 6
    assert fb["background_events_per_s"] > 0 and isinstance(r["meets_feedback_p99_2000_events_per_s"], bool)
    # probing started once the trainer had learned what the stream workers consumed (the roles' /metrics)
    assert fb["caught_up_after_s"] is not None and fb["examples_behind_at_first_probe"] <= 2000
    assert json.loads((out / "scale.json").read_text())["sizes"][0]["users"] == small["users"]
    for p in r["plots"]:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {Path(p).name for p in r["plots"]} >= {"trainer_events_per_s.png", "snapshot_bytes.png", "serving_p99_ms.png"}


# ---------------------------------------------------------------------------------- reco bench shards
def _shard_models(n: int = 2):
    from trainer.model import HybridMF

    models = [HybridMF(n_factors=4, seed=1, rank_sample=0.0) for _ in range(n)]
    for s, m in enumerate(models):
        for e in range(30):
            m.learn_one(f"u{s}-{e % 3}", f"i{s}-{e % 5}" if e % 2 else "shared", 4.0, event_time=1.0 + e)
    return models


def test_item_sharing_gives_every_shard_every_item_and_counts_each_event_once() -> None:
    from serving.bench.shards import ItemSharing

    models = _shard_models()
    share = ItemSharing()
    share(models)
    ids = [{x for x in m._iids if x is not None} for m in models]
    assert ids[0] == ids[1] and {"shared", "i0-1", "i1-1"} <= ids[0]
    m = models[0]
    r = m._imap["shared"]
    once = m._RPOP[r].copy()
    assert once[-1] > 20  # 15 events in each shard, slow horizon: nearly all still counted
    share(models)  # nothing learned in between: the shared counts must not grow
    assert np.allclose(m._RPOP[r], once, rtol=1e-6)
    assert np.allclose(models[0]._Q[r], models[1]._Q[models[1]._imap["shared"]])


def test_shard_simulation_on_a_small_stream() -> None:
    from serving.bench.shards import simulate
    from trainer.bench.quality import demo_stream

    stream = demo_stream(events=3000, users=60, items=80)
    params = {"n_factors": 8, "seed": 3, "rank_sample": 0.0}
    one = simulate(stream, params, shards=1, sync=0, every=2)
    four = simulate(stream, params, shards=4, sync=0, every=2)
    shared = simulate(stream, params, shards=4, sync=200, every=2)
    assert one["n_evaluated"] == four["n_evaluated"] == shared["n_evaluated"] > 100
    assert one["target_item_unknown_to_shard"] < four["target_item_unknown_to_shard"]
    assert shared["target_item_unknown_to_shard"] < four["target_item_unknown_to_shard"]
    with pytest.raises(ValueError, match="shards"):
        simulate(stream, params, shards=0, sync=0)
