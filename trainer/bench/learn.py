"""``reco bench trainer``: the online model against river on the same stream.

Protocol: a MovieLens-style ratings CSV (``userId,movieId,rating,timestamp``) in time order
(stable), predict-then-learn, predictions clipped to the rating scale. Our model sees the stream in
``--batch-size`` batches (what the live trainer sees; still sequential inside, one compiled call per
batch); river's ``reco.BiasedMF`` and ``reco.Baseline`` see it one event at a time in the same
process. numba compilation happens on a clone before the timed region.

Also measured: replay (with/without, several policies and ratios) on the plain stream and on a
stream with an injected abrupt drift (from the middle on, the ratings of a block of items flip,
``r -> rating_min + rating_max - r``), the drift detector's delay and false alarms on that stream,
and memory per user row.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from streamproc.examples import KIND_RATING, ExampleBatch
from trainer.settings import TrainerSettings

__all__ = ["register_bench", "load_ratings", "rating_batches"]

log = logging.getLogger("reco.bench.trainer")
DEFAULT_RATINGS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "ml-latest-small" / "ratings.csv"


def load_ratings(path: str | Path) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """(user ids, item ids, ratings, timestamps) sorted by timestamp (stable)."""
    users, items, ratings, times = [], [], [], []
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            for row in reader:
                users.append(row["userId"])
                items.append(row["movieId"])
                ratings.append(float(row["rating"]))
                times.append(float(row["timestamp"]))
    except (OSError, KeyError, ValueError) as exc:
        from streamproc.errors import RecoError

        raise RecoError(f"{path}: not a MovieLens-style ratings CSV (userId,movieId,rating,timestamp): {exc}") from None
    r, t = np.array(ratings), np.array(times)
    order = np.argsort(t, kind="stable")
    return [users[i] for i in order], [items[i] for i in order], r[order], t[order]


def rating_batches(users: list[str], items: list[str], ratings: np.ndarray, times: np.ndarray, size: int) -> list[ExampleBatch]:
    out = []
    for s in range(0, len(ratings), size):
        n = len(ratings[s : s + size])
        t = times[s : s + size]
        out.append(ExampleBatch.build(event_ids=[""] * n, user_ids=users[s : s + size], item_ids=items[s : s + size],
                                      kinds=np.full(n, KIND_RATING), targets=ratings[s : s + size],
                                      event_times=t, published=t, processed=t))
    return out


def _rmse(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.sqrt(np.mean((p - y) ** 2)))


def _run(model: Any, batches: list[ExampleBatch], monitor: Any = None, react: bool = False) -> tuple[np.ndarray, float, list[dict]]:
    preds, found = [], []
    t0 = time.perf_counter()
    for b in batches:
        p = model.learn_batch(b)
        preds.append(p)
        if monitor is not None:
            det = monitor.update_batch(b, p)
            found += det
            if react and any(d["signal"] == "error" for d in det):
                model.on_drift()
    return np.concatenate(preds), time.perf_counter() - t0, found


def _river(users: list[str], items: list[str], ratings: np.ndarray, lo: float, hi: float) -> dict[str, float]:
    from river import optim, reco

    out: dict[str, float] = {}
    models = {
        # the configuration of river's own MovieLens tutorial ("Matrix Factorization for Recommender Systems")
        "biasedmf": reco.BiasedMF(n_factors=10, bias_optimizer=optim.SGD(0.025), latent_optimizer=optim.SGD(0.05),
                                  weight_initializer=optim.initializers.Zeros(),
                                  latent_initializer=optim.initializers.Normal(mu=0.0, sigma=0.1, seed=73),
                                  l2_bias=0.0, l2_latent=0.0),
        "baseline": reco.Baseline(optimizer=optim.SGD(0.025), l2=0.0, initializer=optim.initializers.Zeros()),
    }
    for name, m in models.items():
        preds = np.empty(len(ratings))
        t0 = time.perf_counter()
        for n, (u, i, y) in enumerate(zip(users, items, ratings.tolist(), strict=True)):
            preds[n] = m.predict_one(u, i)  # type: ignore[assignment]  # river annotates predictions as numbers.Number
            m.learn_one(u, i, y)
        dt = time.perf_counter() - t0
        preds = np.clip(preds, lo, hi)
        out[f"river_{name}_rmse"] = round(_rmse(preds, ratings), 4)
        out[f"river_{name}_mae"] = round(float(np.mean(np.abs(preds - ratings))), 4)
        out[f"river_{name}_events_per_s"] = round(len(ratings) / dt, 1)
        log.info("river %s: rmse %.4f, %.0f events/s", name, out[f"river_{name}_rmse"], out[f"river_{name}_events_per_s"])
    return out


def _cmd_bench_trainer(args: argparse.Namespace, settings: TrainerSettings) -> int:
    from trainer.drift import DriftMonitor
    from trainer.model import HybridMF

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    if args.ratings is None and not DEFAULT_RATINGS.is_file():
        # nothing beside the clone: the built-in demo data's ratings (and rated comments)
        from trainer.bench.quality import demo_stream

        s = demo_stream()
        keep = ~np.isnan(s.ratings)
        users = [u for u, k in zip(s.users, keep, strict=True) if k]
        items = [i for i, k in zip(s.items, keep, strict=True) if k]
        ratings, times = s.ratings[keep], s.times[keep]
        args.ratings = s.source
        log.info("no ratings at %s: using %s", DEFAULT_RATINGS, s.source)
    else:
        users, items, ratings, times = load_ratings(args.ratings or DEFAULT_RATINGS)
    if args.limit:
        users, items, ratings, times = users[: args.limit], items[: args.limit], ratings[: args.limit], times[: args.limit]
    n = len(ratings)
    lo, hi = settings.rating_min, settings.rating_max
    bs = args.batch_size
    batches = rating_batches(users, items, ratings, times, bs)
    base = HybridMF.from_settings(settings)
    params = base.get_params()

    # numba compile (cached on disk after the first run) + warm-up, outside the timed region
    t0 = time.perf_counter()
    warm = base.clone()
    for b in batches[:3]:
        warm.learn_batch(b)
    compile_s = time.perf_counter() - t0

    out: dict[str, Any] = {"events": n, "ratings_csv": str(args.ratings), "batch_size": bs,
                           "model": "HybridMF", "n_factors": base.n_factors, "replay_ratio": base.replay_ratio,
                           "replay_policy": base.replay_policy, "warmup_s": round(compile_s, 3)}
    model = base.clone()
    preds, dt, _ = _run(model, batches)
    out["rmse"] = round(_rmse(preds, ratings), 4)
    out["mae"] = round(float(np.mean(np.abs(preds - ratings))), 4)
    out["events_per_s"] = round(n / dt, 1)
    log.info("HybridMF: rmse %.4f, %.0f events/s (batch %d)", out["rmse"], out["events_per_s"], bs)
    # the same at other batch sizes: sequential inside, so quality must not depend on it
    for other in (1, 256) if not args.quick else ():
        if other == bs:
            continue
        ob = rating_batches(users, items, ratings, times, other) if other > 1 else None
        if ob is None:  # batch size 1: learn_one-like path, on a prefix (Python overhead per call)
            m = base.clone()
            k = min(n, 20_000)
            ob = rating_batches(users[:k], items[:k], ratings[:k], times[:k], 1)
            p, d, _ = _run(m, ob)
            out["events_per_s_batch_1"] = round(k / d, 1)
            continue
        p, d, _ = _run(base.clone(), ob)
        out[f"rmse_batch_{other}"] = round(_rmse(p, ratings), 4)
        out[f"events_per_s_batch_{other}"] = round(n / d, 1)

    # replay: with / without, on the plain stream and on a drifted stream
    flip = np.array([zlib.crc32(i.encode()) % 2 == 0 for i in items])
    t_drift = n // 2
    drifted = ratings.copy()
    sel = flip & (np.arange(n) >= t_drift)
    drifted[sel] = lo + hi - drifted[sel]
    dbatches = rating_batches(users, items, drifted, times, bs)
    configs = [("none", 0.0, "reservoir")]
    if not args.quick:
        configs += [(f"{pol}@{r:g}", r, pol) for pol in ("reservoir", "recency", "per_user") for r in (0.25, 1.0)]
    grid: dict[str, dict[str, float]] = {}
    for name, ratio, pol in configs:
        row: dict[str, float] = {}
        m = HybridMF(**{**params, "replay_ratio": ratio, "replay_policy": pol})
        p, _, _ = _run(m, batches)
        row["rmse"] = round(_rmse(p, ratings), 4)
        m = HybridMF(**{**params, "replay_ratio": ratio, "replay_policy": pol})
        p, _, _ = _run(m, dbatches, DriftMonitor(settings.drift_detector), react=True)
        row["rmse_drift_stream"] = round(_rmse(p, drifted), 4)
        row["rmse_after_drift"] = round(_rmse(p[t_drift:], drifted[t_drift:]), 4)
        grid[name] = row
        log.info("replay %s: %s", name, row)
    out["rmse_no_replay"] = grid["none"]["rmse"]
    out["replay"] = grid
    if grid:
        out["replay_best"] = min(grid, key=lambda k: grid[k]["rmse"] + grid[k]["rmse_drift_stream"])

    # drift detection on the drifted stream (default model, detector from settings, with reaction)
    mon = DriftMonitor(settings.drift_detector)
    m = base.clone()
    p, _, found = _run(m, dbatches, mon, react=True)
    err = [d for d in found if d["signal"] == "error"]
    rating_det = [d for d in found if d["signal"] == "rating"]
    after = [d["index"] for d in err if d["index"] >= t_drift]
    out.update({
        "drift_at_event": t_drift, "drift_items_flipped_fraction": round(float(flip.mean()), 3),
        "drift_detector": settings.drift_detector,
        "drift_detection_delay_events": (after[0] - t_drift) if after else None,
        "drift_false_alarms": sum(1 for d in err if d["index"] < t_drift),
        "drift_detections_after": len(after),
        "drift_rating_signal_false_alarms": sum(1 for d in rating_det if d["index"] < t_drift),
        "drift_rating_signal_delay_events": next((d["index"] - t_drift for d in rating_det if d["index"] >= t_drift), None),
        "rmse_after_drift_with_reaction": round(_rmse(p[t_drift:], drifted[t_drift:]), 4),
    })
    m = base.clone()
    p, _, _ = _run(m, dbatches)
    out["rmse_after_drift_no_reaction"] = round(_rmse(p[t_drift:], drifted[t_drift:]), 4)

    # memory at the default factor count
    mem = model.memory_bytes_per_row()
    user_alloc = sum(getattr(model, a).nbytes for a in model._USER_ARRAYS)
    out["memory_bytes_per_user"] = round(mem["user"], 1)
    out["memory_bytes_per_item"] = round(mem["item"], 1)
    out["memory_bytes_per_user_allocated"] = round(user_alloc / max(model.n_users, 1) + mem["user"] - sum(
        getattr(model, a)[0:1].nbytes for a in model._USER_ARRAYS), 1)
    out["users"], out["items"] = model.n_users, model.n_items

    # anchors: river on the same stream, same process
    if not args.no_river:
        out.update(_river(users, items, ratings, lo, hi))
        out["rmse_ratio_vs_river_biasedmf"] = round(out["rmse"] / out["river_biasedmf_rmse"], 4)
        out["speed_ratio_vs_river_biasedmf"] = round(out["events_per_s"] / out["river_biasedmf_events_per_s"], 2)
        out["target_rmse_ratio"] = 0.99
        out["target_speed_ratio"] = 4.0
        out["meets_targets"] = bool(out["rmse_ratio_vs_river_biasedmf"] <= 0.99 and out["speed_ratio_vs_river_biasedmf"] >= 4.0)
    out = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}
    from streamproc.runtime import print_result

    print_result(out, args.json)
    return 0


def register_bench(bench: argparse._SubParsersAction) -> None:
    """Add ``reco bench trainer``."""
    p = bench.add_parser("trainer", help="online model vs river BiasedMF/Baseline on a MovieLens-style stream")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--ratings", default=None, help="MovieLens-style ratings CSV (default: ml-latest-small beside the clone, else the built-in demo data)")
    p.add_argument("--batch-size", type=int, default=1000, help="examples per learn_batch call (default 1000)")
    p.add_argument("--limit", type=int, default=0, help="use only the first N ratings (0 = all)")
    p.add_argument("--quick", action="store_true", help="skip the replay grid and the other batch sizes")
    p.add_argument("--no-river", action="store_true", help="skip the river anchors")
    p.set_defaults(func=_cmd_bench_trainer)
