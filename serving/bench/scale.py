"""``reco bench scale``: how each role's cost grows with users, items and the event rate.

Drives the real roles' code with a synthetic stream (:func:`synthetic_stream`: every user at least
once, Zipf-like item popularity and user activity, half clicks and half ratings from a low-rank
truth) at growing sizes. Each size runs in its own process, so resident memory is that size's:

* **trainer** (:class:`trainer.worker.TrainerWorker`, the real one, on the embedded broker):
  events/s of ``learn`` on batches of 1,000 examples; resident memory growth and
  ``HybridMF.memory_bytes_per_row``; checkpoint write time and bytes; a full snapshot on the
  model-snapshots topic: its bytes, the training thread's stall (the rows copied by
  ``export(full=True)``) and the background send (chunking, encoding, compression, send); then
  10 s (1M users: 4 s) of stream at 2,000 events/s in deltas of ``update_interval_ms`` on
  model-updates and their bytes (raw and as ``RECO_COMPRESSION`` stores them);
* **new replica** (:class:`serving.kafka_io.UpdateFollower` into a :class:`serving.store.ModelStore`,
  in a fresh process, as ``reco serve`` starts one): time from start to its first answer from the
  model (the newest snapshot read from model-snapshots), then to having applied every delta after
  it; the bytes it read from each topic, its memory, and top-10 latency on the model it built;
* **serving alone** (items 1k → 1M): a :class:`serving.bench.synthetic.SyntheticModel` snapshot built into a
  :class:`serving.model.ServingModel`; top-10 latency (in process, no HTTP) and memory;
* **feedback latency** at a steady 2,000 events/s: ``reco bench freshness``'s probe loop, whole
  loop up (streamproc → trainer → model update → serving), the trainer starting from the largest
  size's checkpoint (1M users x 100k items in the full run) and background feedback over those
  users and items (:func:`background_events`).

Model-updates traffic per replica at 2,000 events/s = the model-updates bytes the new replica read
for the deltas of the stream above (what a following replica consumes: it reads model-snapshots only
at start and after a gap), per second of stream, scaled to the stored (compressed) size by the
codec's ratio on those deltas. Sizes above ``--snapshot-max-users`` (default: none) report snapshot
and replica figures extrapolated linearly per user row from the largest measured size, marked
``"extrapolated": true``.

The JSON holds, for every target of issue 14, the figure and a ``meets_<target>`` boolean.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from serving.settings import ServingSettings
from streamproc.runtime import embedded_or_configured, print_result

__all__ = ["synthetic_stream", "run_scale", "register_bench", "plot", "TARGETS"]

FULL_SIZES = ((10_000, 1_000), (100_000, 10_000), (1_000_000, 100_000))
QUICK_SIZES = ((2_000, 200), (6_000, 600))
FULL_SERVING_ITEMS = (1_000, 10_000, 100_000, 1_000_000)
QUICK_SERVING_ITEMS = (1_000, 5_000)
FEEDBACK_RATE = 2_000.0  # events/s of the feedback-latency and traffic figures
# the feedback loop's serving replica publishes the snapshots (RECO_PUBLISH_SNAPSHOTS_S), as docs/scaling.md
# advises at this size: a trainer's 1M-user snapshot recomputes every user's candidates (~45 s of its
# training thread) and its send took the trainer's headroom, so probes waited 3-15 s during one
FEEDBACK_SNAPSHOTS_S = 90.0
TARGETS = {
    "trainer_memory_gib_per_1m_users": 0.5,
    "serving_p99_ms_100k_items": 10.0,
    "serving_p99_ms_1m_items": 20.0,
    "replica_ready_s": 30.0,
    "feedback_p99_s": 3.0,
    "model_updates_mb_per_s_per_replica": 2.0,
    "ann_recall_at_10_min": 0.95,  # approximate top-k against the exact scan, at the largest catalogue (at least)
}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _zipf_cdf(n: int, s: float) -> np.ndarray:
    """Cumulative P(rank <= r) over ranks ``0..n-1`` with P(rank r) ∝ 1 / (r + 1)^s."""
    cdf = np.cumsum(1.0 / np.arange(1, n + 1, dtype=np.float64) ** s)
    return cdf / cdf[-1]


def _zipf_draw(rng: np.random.Generator, cdf: np.ndarray, size: int) -> np.ndarray:
    """``size`` ranks drawn from :func:`_zipf_cdf`'s law (rank 0 the most popular)."""
    return np.minimum(np.searchsorted(cdf, rng.random(size)), len(cdf) - 1)


def _zipf_choice(rng: np.random.Generator, n: int, size: int, s: float) -> np.ndarray:
    """``size`` draws from ranks ``0..n-1`` with P(rank r) ∝ 1 / (r + 1)^s (rank 0 the most popular)."""
    return _zipf_draw(rng, _zipf_cdf(n, s), size)


def synthetic_stream(users: int, items: int, events: int, seed: int = 0, *, item_skew: float = 1.0,
                     user_skew: float = 0.6, click_share: float = 0.5, start: float = 1.7e9, rate: float = 1_000.0
                     ) -> dict[str, Any]:
    """A stream of ``events`` feedback events over ``users`` x ``items``.

    Every user appears at least once (``events >= users``); other events pick users and every
    event picks its item from Zipf-like laws (exponents ``user_skew``, ``item_skew``; ids are
    shuffled, so popularity is not the id order). Ratings come from a rank-4 truth, clipped to
    0.5..5 in half steps; ``click_share`` of the events are clicks. Event times advance at ``rate``
    events/s from ``start``.

    Returns ``{"users", "items"}`` (id lists), ``kinds`` (uint8), ``targets`` (NaN for clicks)
    and ``times`` (float64), one entry per event, in stream order.

    Examples
    --------
    >>> s = synthetic_stream(50, 20, 200, seed=1)
    >>> len(s["users"]), len(set(s["users"]))
    (200, 50)
    """
    from streamproc.examples import KIND_CLICK, KIND_RATING

    if users < 1 or items < 1:
        raise ValueError(f"users={users!r}, items={items!r}: both must be >= 1")
    if events < users:
        raise ValueError(f"events={events!r}: must be >= users={users!r} (every user appears)")
    rng = np.random.default_rng(seed)
    u = np.concatenate([np.arange(users), rng.permutation(users)[_zipf_choice(rng, users, events - users, user_skew)]])
    u = u[rng.permutation(events)]
    i = rng.permutation(items)[_zipf_choice(rng, items, events, item_skew)]
    pu, qi = rng.normal(0, 0.6, (users, 4)), rng.normal(0, 0.6, (items, 4))
    truth = 3.2 + np.einsum("ij,ij->i", pu[u], qi[i]) + rng.normal(0, 0.5, events)
    kinds = np.where(rng.random(events) < click_share, KIND_CLICK, KIND_RATING).astype(np.uint8)
    targets = np.where(kinds == KIND_RATING, np.clip(np.round(truth * 2) / 2, 0.5, 5.0), np.nan)
    return {"users": [f"u{x}" for x in u.tolist()], "items": [f"i{x}" for x in i.tolist()], "kinds": kinds,
            "targets": targets, "times": start + np.arange(events, dtype=np.float64) / rate}


def _batches(stream: dict[str, Any], size: int) -> list[Any]:
    from streamproc.examples import ExampleBatch

    out = []
    n = len(stream["users"])
    for lo in range(0, n, size):
        hi = min(n, lo + size)
        t = stream["times"][lo:hi]
        out.append(ExampleBatch.build(event_ids=[""] * (hi - lo), user_ids=stream["users"][lo:hi], item_ids=stream["items"][lo:hi],
                                      kinds=stream["kinds"][lo:hi], targets=stream["targets"][lo:hi], event_times=t,
                                      published=t, processed=t, emb_rows=np.full(hi - lo, -1, np.int32), embeddings=None))
    return out


def _q(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(np.asarray(values), q)), 4) if values else None


class _SizeRecorder:  # wraps one of the trainer's producers (deltas, snapshots)
    """Wraps the trainer's real producer: forwards every send, keeps each message's size (and the
    message itself while ``keep`` is set, for the codec's stored size afterwards)."""

    def __init__(self, producer: Any) -> None:
        self._p = producer
        self.sizes: list[int] = []
        self.kept: list[bytes] = []
        self.keep = False

    def send(self, topic: str, value: bytes, **kw: Any) -> Any:
        self.sizes.append(len(value))
        if self.keep:
            self.kept.append(value)
        return self._p.send(topic, value=value, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._p, name)


def _stored_bytes(values: list[bytes], codec: str) -> int:
    """Bytes of ``values`` as the producer stores them with ``codec`` (one batch per message)."""
    import kafka.codec as kc

    if codec in ("none", "") or not values:
        return sum(map(len, values))
    enc = getattr(kc, f"{codec}_encode")
    return sum(min(len(v), len(enc(v))) for v in values)


# ---------------------------------------------------------------------------------- one size (own process)
def _trainer_size(settings: ServingSettings, users: int, items: int, events: int, snapshot: bool, seed: int, tail_events: int = 20_000) -> dict[str, Any]:
    from prometheus_client import CollectorRegistry

    from trainer.model import _LP_REBASE, warm_up  # events between moves of the log-popularity reference
    from trainer.worker import TrainerWorker

    warm_up(settings)
    out: dict[str, Any] = {"users": users, "items": items, "events": events}
    stream = synthetic_stream(users, items, events + tail_events, seed)
    # the last tail_events / 2,000 s are the delta stream at 2,000 events/s, learned after the snapshot
    learn_part = {k: v[:events] for k, v in stream.items()}
    tail = {k: v[events:] for k, v in stream.items()}
    rss0 = _rss()  # the stream (ids included) is resident already; batches are built one at a time
    w = TrainerWorker(settings, registry=CollectorRegistry())
    first = 1000
    w.learn(_batches({k: v[:first] for k, v in learn_part.items()}, first)[0])
    learn_s = 0.0
    for lo in range(first, events, 1000):
        b = _batches({k: v[lo : lo + 1000] for k, v in learn_part.items()}, 1000)[0]
        t0 = time.perf_counter()
        w.learn(b)
        learn_s += time.perf_counter() - t0
    rss1 = _rss()
    m = w.model
    per_row = m.memory_bytes_per_row()
    out.update(trainer_events_per_s=round((events - first) / learn_s, 1), learn_s=round(learn_s, 2),
               user_rows=m.n_users, item_rows=m.n_items, memory_bytes_per_user_row=per_row["user"],
               memory_bytes_per_item_row=per_row["item"], trainer_rss_growth_bytes=rss1 - rss0,
               knn_pairs=int(m.cooc.memory_bytes()["pairs"]))
    # per 1M users: the rows' own bytes here; run_scale also takes the resident growth between
    # the two largest sizes (fixed costs like the replay buffer and compiled code cancel out)
    out["trainer_memory_gib_per_1m_users"] = round(per_row["user"] * 1e6 / 2**30, 4)
    del learn_part

    t0 = time.perf_counter()
    ck = w.checkpoint()
    out["checkpoint_write_s"] = round(time.perf_counter() - t0, 3)
    ck_path = ck.path if ck is not None else None
    out["checkpoint_bytes"] = sum(p.stat().st_size for p in Path(ck_path).rglob("*") if p.is_file()) if ck_path is not None else None

    w.open()
    rec = _SizeRecorder(w._producer)
    w._producer = rec
    snap_rec = _SizeRecorder(w._snap_producer)
    w._snap_producer = snap_rec
    # the rows learned above count as delivered by deltas, as in a running trainer (exporting them as
    # one delta here would recompute every user's candidates: minutes at 1M users, on no real path)
    w.model._TOUCH_U[:] = False
    w.model._TOUCH_I[:] = False
    w._reset_pending()
    w._in_sync = True
    w.version = max(w.version, 1)
    try:
        t_snap = time.perf_counter()
        if snapshot:  # started here, sent by its thread while the stream below is learned and published
            snap_rec.keep = True
            w.publish_snapshot()
            out["snapshot_stall_s"] = w.last_snapshot.get("stall_s")  # the training thread's share: export(full=True)
            out["snapshot_version"] = w.version
        # 10 s of stream at 2,000 events/s: one delta per update_interval_ms of events
        per_delta = max(1, int(FEEDBACK_RATE * settings.update_interval_ms / 1000))
        rec.sizes, rec.keep = [], True
        delta_s = []
        tail_batches = _batches(tail, per_delta)
        t_tail = time.perf_counter()
        step_s = []
        rebase_sizes: list[int] = []
        rebase_kept: list[bytes] = []
        for b in tail_batches:
            t_step = time.perf_counter()
            w.learn(b)
            t0 = time.perf_counter()
            lp_ref, n_sent = w.model._lp_ref, len(rec.sizes)
            w.publish_delta()
            delta_s.append(time.perf_counter() - t0)
            if w.model._lp_ref != lp_ref:  # this delta moved the log-popularity reference: it carries every item row
                rebase_sizes += rec.sizes[n_sent:]
                rebase_kept += rec.kept[n_sent:]
            w.advance_snapshot()  # as each loop turn of TrainerWorker.run: a slice of the snapshot's candidates
            step_s.append(time.perf_counter() - t_step)
        # the longest learn + publish step of the stream while the snapshot was under way: the pause
        # a snapshot costs learning
        out["tail_step_max_s"] = round(max(step_s), 4) if step_s else None
        if snapshot:
            w.advance_snapshot(None)  # the rest at once (the stream above is over)
            assert w._snap_thread is not None
            w._snap_thread.join()
            out["snapshot_publish_s"] = round(time.perf_counter() - t_snap, 3)
            out["snapshot_send_s"] = w.last_snapshot.get("send_s")  # background thread: chunk, encode, compress, send
            out["snapshot_candidates_s"] = w.last_snapshot.get("candidates_s")  # the users' candidates, in slices
            out["snapshot_candidate_slice_max_s"] = w.last_snapshot.get("candidate_slice_max_s")
            out["snapshot_overlaps_stream"] = True
            snap_rec.keep = False
            out["snapshot_chunks"] = w.last_snapshot.get("messages")
            out["snapshot_bytes"] = sum(snap_rec.sizes)
            out["snapshot_bytes_stored"] = _stored_bytes(snap_rec.kept, settings.compression)
            snap_rec.kept = []
        seconds = len(tail["users"]) / FEEDBACK_RATE
        out["tail_seconds_of_stream"] = seconds
        out["tail_wall_s"] = round(time.perf_counter() - t_tail, 2)  # learn + publish of those seconds: > 1x = cannot keep up
        out["delta_messages"] = len(rec.sizes)
        out["delta_bytes_per_s"] = round(sum(rec.sizes) / seconds, 1)
        out["delta_bytes_stored_per_s"] = round(_stored_bytes(rec.kept, settings.compression) / seconds, 1)
        # once every _LP_REBASE events (1M: ~8 min at 2,000 events/s) a delta carries every item row;
        # its share of the traffic is its bytes over that interval, not over this short window
        out["rebase_delta_bytes"] = sum(rebase_sizes)
        out["rebase_delta_bytes_stored"] = _stored_bytes(rebase_kept, settings.compression)
        out["rebase_interval_s"] = _LP_REBASE / FEEDBACK_RATE
        out["delta_publish_ms_p50"] = round(1000 * float(np.median(delta_s)), 2)
        out["delta_publish_s_per_s_of_stream"] = round(sum(delta_s) / seconds, 4)
        out["final_version"] = w.version
    finally:
        w._producer = rec._p
        w._snap_producer = snap_rec._p
        w.close()
    return out


def _replica_size(settings: ServingSettings, version: int, samples: int) -> dict[str, Any]:
    """A new replica in a fresh process: start → first answer from the model (the newest snapshot on
    model-snapshots), then → ``version`` served (the deltas after it applied); bytes read per topic."""
    import kafka  # noqa: F401 - imported before the baseline: the replica's memory is its model's
    from prometheus_client import CollectorRegistry

    from serving.kafka_io import UpdateFollower
    from serving.metrics import ServingMetrics
    from serving.store import ModelStore

    rss0 = _rss()
    store = ModelStore(settings, ServingMetrics(CollectorRegistry()))
    follower = UpdateFollower(settings, store)
    t0 = time.perf_counter()
    follower.start()
    deadline = time.monotonic() + 600
    while store.current is None and time.monotonic() < deadline:
        time.sleep(0.01)
    first = store.current
    if first is not None:  # the first answer from the model (a known user's top-10)
        first.recommend(first._users.ids[0] if first.n_users else "nobody", 10)
    ready_s = time.perf_counter() - t0
    snapshot_version = store.version
    while (store.version or 0) < version and time.monotonic() < deadline:
        time.sleep(0.02)
    caught_up_s = time.perf_counter() - t0
    follower.stop()
    model = store.current
    out: dict[str, Any] = {"replica_ready_s": round(ready_s, 3), "replica_first_version": snapshot_version,
                           "replica_caught_up_s": round(caught_up_s, 3), "replica_version": store.version,
                           "replica_snapshot_loads": follower.snapshot_loads, "replica_snapshot_bytes_read": follower.snapshot_bytes_read,
                           "replica_delta_bytes_read": follower.delta_bytes_read, "replica_rss_growth_bytes": _rss() - rss0}
    if model is not None:
        out.update(_latency(model, samples))
    return out


def _latency(model: Any, samples: int, k: int = 10, prefix: str = "serving", tops: list[list[str]] | None = None) -> dict[str, Any]:
    """Top-``k`` latency of ``model.recommend`` for ``samples`` known users (seeded picks, the
    same for every model of a size); their answers go to ``tops`` when given."""
    rng = np.random.default_rng(1)
    users = model._users.ids[: model.n_users]
    picks = rng.integers(0, max(len(users), 1), samples)
    for n in range(min(50, samples)):  # warm caches
        model.recommend(users[int(picks[n])], k)
    lat = []
    for p in picks.tolist():
        t0 = time.perf_counter()
        rec = model.recommend(users[p], k)
        lat.append((time.perf_counter() - t0) * 1000)
        if tops is not None:
            tops.append([i for i, _ in rec.items])
    return {f"{prefix}_p50_ms": _q(lat, 50), f"{prefix}_p99_ms": _q(lat, 99), f"{prefix}_requests": len(lat)}


def _serving_size(settings: ServingSettings, items: int, users: int, samples: int, seed: int) -> dict[str, Any]:
    """Serving alone at ``items``: the exact scan (as ``reco serve`` runs it: numpy's default BLAS
    threads, and with one BLAS thread), the approximate path (:mod:`serving.ann`) with its recall@10
    against the exact answers, and which of the two the settings serve at this size."""
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    from serving.ann import recall_at_k
    from serving.bench.synthetic import SyntheticModel
    from serving.model import ServingModel

    rss0 = _rss()
    syn = SyntheticModel(users, items, 32, seed=seed, candidates=50,
                         ranking={"knn": 1.0, "popularity": 0.2, "mf": 0.5, "rating_span": 4.5})
    snap = syn.snapshot(max_bytes=1 << 40)
    del syn
    t0 = time.perf_counter()
    model = ServingModel.build(None, snap)
    build_s = time.perf_counter() - t0
    del snap
    out: dict[str, Any] = {"items": items, "users": users, "build_s": round(build_s, 3), "serving_rss_bytes": _rss() - rss0}
    exact_tops: list[list[str]] = []
    out.update(_latency(model, samples, prefix="exact", tops=exact_tops))
    with threadpool_limits(1):
        out.update(_latency(model, samples, prefix="exact_blas1"))
    if items >= 50_000 or (settings.ann_min_items and items >= settings.ann_min_items):  # before/after from 50k items
        snap = SyntheticModel(users, items, 32, seed=seed, candidates=50,
                              ranking={"knn": 1.0, "popularity": 0.2, "mf": 0.5, "rating_span": 4.5}).snapshot(max_bytes=1 << 40)
        t0 = time.perf_counter()
        approx = ServingModel.build(None, snap, ann_min_items=1, ann_fetch=settings.ann_fetch)
        out["ann_build_s"] = round(time.perf_counter() - t0, 3)
        del snap
        ann_tops: list[list[str]] = []
        out.update(_latency(approx, samples, prefix="ann", tops=ann_tops))
        out["ann_recall_at_10"] = round(recall_at_k(ann_tops, exact_tops), 4)
        out["ann_index_bytes"] = int(items * (model.factors + 1) * 4 + items * 8)
    return out  # which path serves at this size is decided by finish() (RECO_ANN_MIN_ITEMS)


def _child(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("part", choices=("trainer", "replica", "serving"))
    p.add_argument("--users", type=int, default=0)
    p.add_argument("--items", type=int, default=0)
    p.add_argument("--events", type=int, default=0)
    p.add_argument("--snapshot", action="store_true")
    p.add_argument("--version", type=int, default=0)
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tail", type=int, default=20_000)
    a = p.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    settings = ServingSettings.load()
    if a.part == "trainer":
        out = _trainer_size(settings, a.users, a.items, a.events, a.snapshot, a.seed, a.tail)
    elif a.part == "replica":
        out = _replica_size(settings, a.version, a.samples)
    else:
        out = _serving_size(settings, a.items, a.users, a.samples, a.seed)
    print("SCALE-RESULT " + json.dumps(out), flush=True)
    return 0


def _run_child(args: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """One part in a fresh process; a part that fails or overruns ``timeout`` is reported as
    ``{"error": ...}`` and the run goes on with the next part."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "serving.bench.scale", *args], env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"part {' '.join(args)} overran {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("SCALE-RESULT "):
            out = json.loads(line[len("SCALE-RESULT "):])
            out["part_wall_s"] = round(time.perf_counter() - t0, 1)
            return out
    return {"error": f"part {' '.join(args)} failed (exit {proc.returncode}): {proc.stderr[-1500:]}"}


# ---------------------------------------------------------------------------------- the run
def _env(settings: ServingSettings, prefix: str, ckpt: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECO_") or k == "RECO_CONFIG"}
    env.update({"RECO_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "RECO_TOPIC_PREFIX": prefix, "RECO_CHECKPOINT_DIR": ckpt,
                "RECO_COMPRESSION": settings.compression, "RECO_MAX_MESSAGE_BYTES": str(settings.max_message_bytes),
                "RECO_UPDATE_INTERVAL_MS": str(settings.update_interval_ms), "RECO_SEED": str(settings.seed)})
    return env


def _extrapolate(size: dict[str, Any], ref: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Fill ``keys`` of ``size`` linearly per user row from ``ref`` (the largest measured size)."""
    scale = size["user_rows"] / max(ref["user_rows"], 1)
    for key in keys:
        if ref.get(key) is not None:
            size[key] = round(ref[key] * scale, 3)
    size["extrapolated"] = True
    size["extrapolated_from_users"] = ref["users"]


def run_scale(settings: ServingSettings, *, quick: bool = False, out_dir: str | None = None, snapshot_max_users: int | None = None,
              feedback: bool = True, progress: bool = True, max_users: int = 10**9, part_timeout: float = 1500.0) -> dict[str, Any]:
    """Run every size (see the module docstring); returns the JSON object (and writes the plots
    and ``scale.json`` into ``out_dir`` when given)."""
    from tqdm import tqdm

    from streamproc.kafka import create_topics

    sizes = QUICK_SIZES if quick else FULL_SIZES
    serving_items = QUICK_SERVING_ITEMS if quick else FULL_SERVING_ITEMS
    snap_max = snapshot_max_users if snapshot_max_users is not None else 10**9  # every size measured (issue 14: no extrapolation)
    samples = 500 if quick else 2000
    steps = 2 * len(sizes) + len(serving_items) + (1 if feedback else 0)
    bar = tqdm(total=steps, desc="reco bench scale", unit="step", file=sys.stderr, disable=not progress)
    t_start = time.perf_counter()
    result: dict[str, Any] = {"quick": quick, "sizes": [], "serving": [], "settings": {
        "factors": settings.factors, "compression": settings.compression, "update_interval_ms": settings.update_interval_ms,
        "snapshot_interval_s": settings.snapshot_interval_s, "max_message_bytes": settings.max_message_bytes},
        "feedback_rate_events_per_s": FEEDBACK_RATE, "cpu_count": os.cpu_count(), "load_avg_1m_at_start": round(os.getloadavg()[0], 2)}
    run_id = int(time.time())
    out = Path(out_dir) if out_dir else None

    def save() -> None:  # partial results survive a part that overruns or a run cut short
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "scale.json").write_text(json.dumps(result, indent=2))

    with tempfile.TemporaryDirectory(prefix="reco-scale-") as tmp, embedded_or_configured(settings, create=False) as s:
        for items in serving_items:
            bar.set_postfix_str(f"serving {items:,} items")
            result["serving"].append(_run_child(["serving", "--items", str(items), "--users", "10000" if not quick else "2000",
                                                 "--samples", str(samples), "--seed", str(settings.seed)], _env(s, "x.", tmp), part_timeout))
            bar.update()
            save()
        largest: tuple[ServingSettings, int, int] | None = None  # the loop of the feedback figure starts from its checkpoint
        for n, (users, items) in enumerate(sizes):
            if users > max_users:
                continue
            prefix = f"{settings.topic_prefix}scale{run_id}x{n}."
            env = _env(s, prefix, str(Path(tmp) / f"ckpt{n}"))
            create_topics(dataclasses.replace(s, topic_prefix=prefix))
            events = 2 * users if users <= 100_000 else users  # every user once at 1M: the CPU budget of the run
            tail = 20_000 if users <= 100_000 else 8_000
            snapshot = users <= snap_max
            bar.set_postfix_str(f"trainer {users:,} users x {items:,} items")
            size = {"users": users, "items": items, **_run_child(
                ["trainer", "--users", str(users), "--items", str(items), "--events", str(events), "--tail", str(tail),
                 "--seed", str(settings.seed)] + (["--snapshot"] if snapshot else []), env, part_timeout)}
            bar.update()
            bar.set_postfix_str(f"replica {users:,} users")
            if snapshot and "error" not in size:
                size.update(_run_child(["replica", "--version", str(size["final_version"]), "--samples", str(samples)], env, part_timeout))
                size["extrapolated"] = False
            bar.update()
            result["sizes"].append(size)
            save()
            if "error" not in size:
                largest = (dataclasses.replace(s, topic_prefix=prefix, checkpoint_dir=env["RECO_CHECKPOINT_DIR"]), users, items)
        if feedback and largest is not None:
            fb_settings, users, items = largest
            bar.set_postfix_str(f"feedback latency at {FEEDBACK_RATE:,.0f} events/s, {users:,} users")
            result["feedback"] = _feedback(fb_settings, users, items, quick)
            bar.update()
            save()
        result["sizes"] = [z for z in result["sizes"] if "error" not in z] + [z for z in result["sizes"] if "error" in z]
        measured = [z for z in result["sizes"] if z.get("extrapolated") is False]
        for z in result["sizes"]:
            if "error" not in z and z.get("extrapolated") is not False and measured:
                _extrapolate(z, measured[-1], ("snapshot_bytes", "snapshot_bytes_stored", "snapshot_publish_s", "snapshot_stall_s",
                                               "snapshot_send_s", "snapshot_chunks", "replica_ready_s", "replica_rss_growth_bytes",
                                               "replica_delta_bytes_read"))
    bar.close()
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    import resource

    ru_c, ru_s = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    # CPU the run used (its parts run one at a time): what the wall time would be on an idle machine, roughly
    result["cpu_seconds"] = round(ru_c.ru_utime + ru_c.ru_stime + ru_s.ru_utime + ru_s.ru_stime, 1)
    result["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)  # other work on the machine skews every figure
    return finish(result, settings, out)


def finish(result: dict[str, Any], settings: ServingSettings, out: Path | None = None) -> dict[str, Any]:
    """Derived figures, verdicts and plots of a run's raw parts (also ``--from`` a saved run):
    the path serving takes at each catalogue size under ``RECO_ANN_MIN_ITEMS``, marginal memory,
    model-updates traffic, ``meets_*``."""
    for z in result["serving"]:
        if "error" in z:
            continue
        served = "ann" if settings.ann_min_items and z["items"] >= settings.ann_min_items and "ann_p99_ms" in z else "exact"
        z["served_path"] = served
        z["serving_p50_ms"], z["serving_p99_ms"] = z[f"{served}_p50_ms"], z[f"{served}_p99_ms"]
    result["ann_min_items"] = settings.ann_min_items
    _marginal_memory([z for z in result["sizes"] if "error" not in z])
    for z in result["sizes"]:
        if "error" in z:
            continue
        # what a following replica read from model-updates for the deltas of the stream (it reads
        # model-snapshots only at start and after a gap), as stored: the codec's ratio on those deltas
        ratio = z.get("delta_bytes_stored_per_s", 0) / max(z.get("delta_bytes_per_s") or 1, 1)
        read = z.get("replica_delta_bytes_read")
        if read is not None and z.get("tail_seconds_of_stream"):
            z["replica_delta_bytes_read_per_s"] = round(read / z["tail_seconds_of_stream"], 1)
            # a rebase delta in the window (every item row, once per rebase_interval_s) counts at its
            # own interval: the rest of what the replica read per second, plus rebase bytes / interval
            rebase = z.get("rebase_delta_bytes") or 0
            steady = (read - rebase) / z["tail_seconds_of_stream"] * ratio
            z["model_updates_bytes_per_s_per_replica"] = round(
                steady + (z.get("rebase_delta_bytes_stored") or 0) / (z.get("rebase_interval_s") or 1e9), 1)
        else:  # no replica at this size: the deltas as stored
            z["model_updates_bytes_per_s_per_replica"] = z.get("delta_bytes_stored_per_s")
    result.update(_verdicts(result))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "scale.json").write_text(json.dumps(result, indent=2))
        (out / "scale.md").write_text(markdown_tables(result))
        result["plots"] = plot(result, out)
    return result


def _marginal_memory(sizes: list[dict[str, Any]]) -> None:
    """Resident bytes per extra user row between consecutive sizes (the item rows' bytes taken
    out); the per-1M-users figure is the larger of that and the rows' own bytes."""
    for a, b in zip(sizes, sizes[1:], strict=False):
        du = b["user_rows"] - a["user_rows"]
        if du <= 0:
            continue
        grow = (b["trainer_rss_growth_bytes"] - a["trainer_rss_growth_bytes"]) - b["memory_bytes_per_item_row"] * (b["item_rows"] - a["item_rows"])
        b["trainer_rss_bytes_per_user_row"] = round(max(grow, 0) / du, 1)
        b["trainer_memory_gib_per_1m_users"] = round(max(b["trainer_rss_bytes_per_user_row"], b["memory_bytes_per_user_row"]) * 1e6 / 2**30, 4)


def background_events(users: int, items: int, seed: int = 1, *, item_skew: float = 1.0, user_skew: float = 0.6,
                      click_share: float = 0.5) -> Iterator[tuple[float, str, bytes]]:
    """Endless feedback events over the users ``u0..`` and items ``i0..`` of :func:`synthetic_stream`
    (the same Zipf-like laws), stamped when drawn: ``(event_time, user_id, JSON bytes)`` for
    :func:`streamproc.replay.replay`.

    >>> import json, itertools
    >>> [json.loads(b)["user_id"].startswith("u") for _, _, b in itertools.islice(background_events(10, 5), 3)]
    [True, True, True]
    """
    from streamproc.events import event_dict

    rng = np.random.default_rng(seed)
    user_of, item_of = rng.permutation(users), rng.permutation(items)
    user_cdf, item_cdf = _zipf_cdf(users, user_skew), _zipf_cdf(items, item_skew)  # once: 1M users
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    count = 0
    while True:
        u = user_of[_zipf_draw(rng, user_cdf, 4096)]
        i = item_of[_zipf_draw(rng, item_cdf, 4096)]
        clicks = rng.random(4096) < click_share
        stars = np.clip(np.round(rng.normal(3.5, 1.0, 4096) * 2) / 2, 0.5, 5.0)
        for a, b, click, r in zip(u.tolist(), i.tolist(), clicks.tolist(), stars.tolist(), strict=True):
            fields = {} if click else {"rating": r}
            ev = event_dict("click" if click else "rating", f"u{a}", f"i{b}", event_id=f"scale-bg-{seed}-{count}", **fields)
            count += 1
            yield ev["event_time"], ev["user_id"], dumps(ev).encode()


def _feedback(settings: ServingSettings, users: int, items: int, quick: bool) -> dict[str, Any]:
    """Publish → visible latency with the whole loop up (:func:`serving.bench.freshness.run_freshness`:
    streamproc → trainer → model update → serving), the trainer starting from the checkpoint of the
    largest size's trainer part (``users`` x ``items``), and background feedback over those users
    and items at 2,000 events/s. Probing starts once the trainer has caught up with the backlog the
    start built (it publishes a snapshot, and serving loads it, while events already arrive): a
    steady 2,000 events/s; ``caught_up_after_s`` says how long that took (None: not within 240 s,
    then the probes run anyway and show it). 80 probes take ~5 minutes, so snapshots fall in the
    window (20 probes, ~75 s, could fall between two). The serving replica publishes them every
    :data:`FEEDBACK_SNAPSHOTS_S` (the trainer publishes the first)."""
    from serving.bench.freshness import run_freshness

    settings = dataclasses.replace(settings, publish_snapshots_s=FEEDBACK_SNAPSHOTS_S)
    r = run_freshness(settings, probes=6 if quick else 80, comment_probes=0, background_rate=FEEDBACK_RATE,
                      warmup_s=5 if quick else 20, background=background_events(users, items, settings.seed + 1),
                      probe_item="i0", ready_timeout_s=600, stop_after_misses=3, catch_up_timeout_s=30 if quick else 240)
    missed = r["probes_missed"] + r["probes_not_run"]
    # a probe not visible within 15 s counts as missing the target: p99 is then not a figure but a miss
    p99 = r["p99_s"] if not missed else None
    return {"p50_s": r["p50_s"], "p99_s": p99, "max_s": r["max_s"], "probes": r["probes"], "probes_missed": r["probes_missed"],
            "probes_not_run": r["probes_not_run"],
            "background_events_per_s": r["background_events_per_s"], "ready_after_healthz_s": r["ready_after_healthz_s"],
            "caught_up_after_s": r["caught_up_after_s"], "examples_behind_at_first_probe": r["examples_behind_at_first_probe"],
            "snapshots_by": f"the serving replica, every {FEEDBACK_SNAPSHOTS_S:.0f} s (RECO_PUBLISH_SNAPSHOTS_S)",
            "serving_snapshots_published": r.get("serving_snapshots_published"),
            "users": users, "items": items, "size": f"{users:,} users x {items:,} items (the trainer part's checkpoint)"}


def _verdicts(r: dict[str, Any]) -> dict[str, Any]:
    """One figure and one ``meets_<target>`` per target of issue 14 (None where not measured)."""
    out: dict[str, Any] = {"targets": TARGETS}
    ok = [z for z in r["sizes"] if "error" not in z]
    big = ok[-1] if ok else {}
    serving = {z["items"]: z for z in r["serving"] if "error" not in z}

    def put(name: str, value: Any, target_key: str, where: str) -> None:
        out[name] = value
        out[f"meets_{name}"] = None if value is None else bool(value <= TARGETS[target_key])
        out[f"{name}_at"] = where

    put("trainer_memory_gib_per_1m_users", big.get("trainer_memory_gib_per_1m_users"), "trainer_memory_gib_per_1m_users",
        f"{big.get('users', 0):,} users x {big.get('items', 0):,} items")
    if serving:  # the anchor: the smallest catalogue's p99 is scheduling noise, not work (p50 is µs)
        small = serving[min(serving)]
        out["serving_p99_noise_floor_ms"] = small.get("exact_p99_ms")
        out["serving_p99_noise_floor_at"] = f"{small['items']:,} items, exact scan, same run"
    p100k = serving.get(100_000, {}).get("serving_p99_ms")
    put("serving_p99_100k_items", p100k, "serving_p99_ms_100k_items", "100,000 items")
    put("serving_p99_1m_items", serving.get(1_000_000, {}).get("serving_p99_ms"), "serving_p99_ms_1m_items", "1,000,000 items")
    put("replica_ready", big.get("replica_ready_s"), "replica_ready_s",
        f"{big.get('users', 0):,} users" + (" (extrapolated)" if big.get("extrapolated") else ""))
    fb = r.get("feedback") or {}
    put("feedback_p99_2000_events_per_s", fb.get("p99_s"), "feedback_p99_s", fb.get("size", ""))
    missed = (fb.get("probes_missed") or 0) + (fb.get("probes_not_run") or 0)
    if missed:  # measured, and missed: some feedback was not visible within 15 s
        out["meets_feedback_p99_2000_events_per_s"] = False
        out["feedback_p99_2000_events_per_s_at"] += f"; {missed} of {missed + fb.get('probes', 0)} probes not visible within 15 s"
    mbps = big.get("model_updates_bytes_per_s_per_replica")
    ann = [z for z in serving.values() if z.get("ann_recall_at_10") is not None]
    out["ann_recall_at_10"] = ann[-1]["ann_recall_at_10"] if ann else None
    out["meets_ann_recall_at_10"] = None if not ann else bool(ann[-1]["ann_recall_at_10"] >= TARGETS["ann_recall_at_10_min"])
    out["ann_recall_at_10_at"] = f"{ann[-1]['items']:,} items" if ann else "not measured (no catalogue above 50,000 items)"
    put("model_updates_traffic_per_replica", None if mbps is None else round(mbps / 1e6, 3), "model_updates_mb_per_s_per_replica",
        f"{big.get('users', 0):,} users, MB/s as stored: the deltas a following replica reads (snapshots only at start or after a gap)")
    return out


# ---------------------------------------------------------------------------------- plots
CURVES = (
    ("trainer_events_per_s", "trainer events/s", "sizes"),
    ("memory_bytes_per_user_row", "trainer bytes per user row", "sizes"),
    ("trainer_rss_growth_bytes", "trainer resident memory growth (bytes)", "sizes"),
    ("snapshot_bytes", "full snapshot bytes (raw)", "sizes"),
    ("snapshot_publish_s", "snapshot publish time, stall + background send (s)", "sizes"),
    ("snapshot_stall_s", "snapshot: training thread stalled (s)", "sizes"),
    ("checkpoint_write_s", "checkpoint write time (s)", "sizes"),
    ("replica_ready_s", "new replica ready (s)", "sizes"),
    ("model_updates_bytes_per_s_per_replica", "model-updates bytes/s per replica at 2,000 events/s", "sizes"),
    ("serving_p99_ms", "serving top-10 p99 (ms)", "serving"),
    ("serving_rss_bytes", "serving memory (bytes)", "serving"),
)


def plot(result: dict[str, Any], out: Path) -> list[str]:
    """One PNG per curve (log-log, x = users for trainer curves, items for serving); returns paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for key, label, table in CURVES:
        rows = [z for z in result[table] if z.get(key) is not None and "error" not in z]
        if not rows:
            continue
        xkey = "users" if table == "sizes" else "items"
        fig, ax = plt.subplots(figsize=(5, 3.4), dpi=90)
        xs, ys = [z[xkey] for z in rows], [z[key] for z in rows]
        ax.plot(xs, ys, "o-")
        for z, x, y in zip(rows, xs, ys, strict=True):
            if z.get("extrapolated") and key in ("snapshot_bytes", "snapshot_publish_s", "replica_ready_s", "model_updates_bytes_per_s_per_replica"):
                ax.plot([x], [y], "o", mfc="white", color="C0")
        if table == "serving" and key == "serving_p99_ms":  # served path (index above RECO_ANN_MIN_ITEMS) vs the exact scan
            ax.plot(xs, [z.get("serving_p50_ms") for z in rows], "s--")
            ax.plot(xs, [z.get("exact_p99_ms") for z in rows], "x:", color="C3")
            ax.plot(xs, [z.get("exact_blas1_p99_ms") for z in rows], "+:", color="C2")
            ax.legend(["served p99", "served p50", "exact scan p99", "exact scan p99, 1 BLAS thread"], fontsize=7)
        ax.set_xscale("log")
        if min(ys) > 0:
            ax.set_yscale("log")
        ax.set_xlabel(xkey)
        ax.set_title(label, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        p = out / f"{key}.png"
        fig.savefig(p)
        plt.close(fig)
        paths.append(str(p))
    return paths


def markdown_tables(result: dict[str, Any]) -> str:
    """The curves as two Markdown tables (trainer sizes, serving sizes) plus the verdicts: what
    README and docs/scaling.md quote, written next to the plots as ``scale.md``."""
    def f(v: Any, unit: str = "", nd: int = 1) -> str:
        if v is None:
            return "–"
        if isinstance(v, float) and not v.is_integer():
            return f"{v:,.{nd}f}{unit}"
        return f"{int(v):,}{unit}"

    def mb(v: Any) -> str:
        return "–" if v is None else f"{v / 1e6:,.1f} MB"

    rows = ["| users × items | trainer events/s | bytes/user row (RSS/user) | checkpoint write | snapshot raw / stored | snapshot stall / send | "
            "deltas at 2,000 ev/s (stored) | updates per replica | replica ready (all deltas) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for z in result["sizes"]:
        if "error" in z:
            rows.append(f"| {z['users']:,} × {z['items']:,} | not measured: {z['error'][:80]} |||||||")
            continue
        x = " (extrapolated)" if z.get("extrapolated") else ""
        rows.append(f"| {z['users']:,} × {z['items']:,} | {f(z['trainer_events_per_s'], '', 0)} | {f(z['memory_bytes_per_user_row'], ' B', 0)}"
                    f" ({f(z.get('trainer_rss_bytes_per_user_row'), ' B', 0)}) | {f(z['checkpoint_write_s'], ' s', 2)} ({mb(z['checkpoint_bytes'])})"
                    f" | {mb(z.get('snapshot_bytes'))} / {mb(z.get('snapshot_bytes_stored'))}{x} | {f(z.get('snapshot_stall_s'), ' s', 2)}"
                    f" / {f(z.get('snapshot_send_s'), ' s', 1)}{x}"
                    f" | {mb(z.get('delta_bytes_stored_per_s'))}/s | {mb(z.get('model_updates_bytes_per_s_per_replica'))}/s{x}"
                    f" | {f(z.get('replica_ready_s'), ' s', 1)} ({f(z.get('replica_caught_up_s'), ' s', 1)}){x} |")
    rows += ["", "| items | exact p50 / p99 (default BLAS threads) | exact p50 / p99 (1 BLAS thread) | index p50 / p99 | recall@10 | index build | served | memory |",
             "|---|---|---|---|---|---|---|---|"]
    for z in result["serving"]:
        if "error" in z:
            continue
        rows.append(f"| {z['items']:,} | {f(z['exact_p50_ms'], ' ms', 2)} / {f(z['exact_p99_ms'], ' ms', 1)} | {f(z['exact_blas1_p50_ms'], ' ms', 2)}"
                    f" / {f(z['exact_blas1_p99_ms'], ' ms', 1)} | {f(z.get('ann_p50_ms'), ' ms', 2)} / {f(z.get('ann_p99_ms'), ' ms', 1)}"
                    f" | {f(z.get('ann_recall_at_10'), '', 3)} | {f(z.get('ann_build_s'), ' s', 1)} | {z.get('served_path', '–')} | {mb(z['serving_rss_bytes'])} |")
    rows += ["", "| target | measured | met |", "|---|---|---|"]
    for key, target in result["targets"].items():
        name = {"trainer_memory_gib_per_1m_users": "trainer_memory_gib_per_1m_users", "serving_p99_ms_100k_items": "serving_p99_100k_items",
                "serving_p99_ms_1m_items": "serving_p99_1m_items", "replica_ready_s": "replica_ready", "feedback_p99_s": "feedback_p99_2000_events_per_s",
                "model_updates_mb_per_s_per_replica": "model_updates_traffic_per_replica", "ann_recall_at_10_min": "ann_recall_at_10"}[key]
        met = result.get(f"meets_{name}")
        rows.append(f"| {key} {'≥' if key.endswith('_min') else '≤'} {target} | {result.get(name)} ({result.get(f'{name}_at', '')}) | "
                    f"{'yes' if met else ('no' if met is False else 'not measured')} |")
    return "\n".join(rows) + "\n"


# ---------------------------------------------------------------------------------- CLI
def _cmd(args: argparse.Namespace, settings: ServingSettings) -> int:
    if args.from_dir:
        saved = Path(args.from_dir) / "scale.json"
        if not saved.is_file():
            raise SystemExit(f"--from {args.from_dir}: no scale.json there (write one with --out)")
        out = finish(json.loads(saved.read_text()), settings, Path(args.out) if args.out else None)
        print_result(out, args.json)
        return 0
    out = run_scale(settings, quick=args.quick, out_dir=args.out, snapshot_max_users=args.snapshot_max_users,
                    feedback=not args.no_feedback, progress=not args.no_progress, max_users=args.max_users)
    print_result(out, args.json)
    return 0


def register_bench(bench: argparse._SubParsersAction) -> None:
    """Add ``reco bench scale``."""
    p = bench.add_parser("scale", help="cost curves: users 10k-1M, items 1k-1M (trainer, snapshots, replicas, serving, feedback)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quick", action="store_true", help="CI-sized: two small sizes, serving at 1k/5k items, 6 probes")
    p.add_argument("--out", default="", help="directory for scale.json and one PNG per curve (default: none)")
    p.add_argument("--snapshot-max-users", type=int, default=None,
                   help="largest size whose full snapshot and replica start are measured (default: all; larger sizes are extrapolated)")
    p.add_argument("--no-feedback", action="store_true", help="skip the feedback-latency loop")
    p.add_argument("--max-users", type=int, default=10**9, help="skip trainer sizes above this many users")
    p.add_argument("--from", dest="from_dir", default="", help="recompute verdicts and plots from DIR/scale.json of an earlier run (no measuring)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=_cmd)


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
