"""``reco bench updates``: model-update bytes and publish/read time per codec (RECO_COMPRESSION).

A :class:`~trainer.worker.TrainerWorker` learns a MovieLens-style stream (ml-latest-small beside
the clone, else synthetic ratings), then, for each codec, publishes a full snapshot and a series
of deltas through its real producer (``compression_type`` from ``RECO_COMPRESSION``) to the
embedded broker, and a plain kafka-python consumer (as a serving replica's follower) reads them
back. Reported per codec: bytes of a snapshot and of a delta as stored (compressed message sizes),
the CPU of compressing / decompressing a snapshot (best of 3), the trainer's publish time (model
export included) and the replica's read time. The ``none`` codec is the anchor.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from trainer.settings import TrainerSettings

__all__ = ["register_bench", "run_bench"]

log = logging.getLogger("reco.bench.updates")
CODECS = ("none", "gzip", "snappy", "lz4", "zstd")


def _ratings(path: str, limit: int) -> tuple[list[str], list[str], np.ndarray, np.ndarray, str]:
    from trainer.bench.learn import load_ratings

    if Path(path).is_file():
        u, i, r, t = load_ratings(path)
        source = path
    else:  # synthetic: 600 users x 9,000 items, ratings from a low-rank truth
        rng = np.random.default_rng(7)
        n = limit or 100_000
        users, items = rng.integers(0, 600, n), rng.integers(0, 9000, n)
        truth = rng.normal(0, 1, (600, 4)) @ rng.normal(0, 1, (9000, 4)).T
        r = np.clip(np.round(3 + truth[users, items]), 0.5, 5.0)
        u, i, t = [f"u{x}" for x in users], [f"m{x}" for x in items], np.arange(n, dtype=float)
        source = "synthetic"
    if limit:
        u, i, r, t = u[:limit], i[:limit], r[:limit], t[:limit]
    return u, i, r, t, source


def _stored_sizes(values: list[bytes], codec: str) -> int:
    """Bytes of ``values`` compressed as one batch each (linger 0: a chunk is its own batch)."""
    import kafka.codec as kc

    if codec == "none":
        return sum(map(len, values))
    enc = getattr(kc, f"{codec}_encode")
    return sum(min(len(v), len(enc(v))) for v in values)  # the producer sends uncompressed if it does not pay


def _codec_ms(values: list[bytes], codec: str, rounds: int = 3) -> tuple[float, float]:
    """CPU of compressing and of decompressing ``values`` with kafka-python's codec (best of rounds)."""
    import kafka.codec as kc

    if codec == "none" or not values:
        return 0.0, 0.0
    enc, dec = getattr(kc, f"{codec}_encode"), getattr(kc, f"{codec}_decode")
    best_e = best_d = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        packed = [enc(v) for v in values]
        t1 = time.perf_counter()
        for p in packed:
            dec(p)
        t2 = time.perf_counter()
        best_e, best_d = min(best_e, t1 - t0), min(best_d, t2 - t1)
    return round(best_e * 1000, 2), round(best_d * 1000, 2)


def run_bench(settings: TrainerSettings, *, ratings: str, limit: int = 0, deltas: int = 20, codecs: tuple[str, ...] = CODECS) -> dict[str, Any]:
    from prometheus_client import CollectorRegistry

    from streamproc.kafka import read_all
    from streamproc.runtime import embedded_or_configured
    from streamproc.topics import Topics
    from trainer.bench.learn import rating_batches
    from trainer.worker import TrainerWorker

    u, i, r, t, source = _ratings(ratings, limit)
    batches = rating_batches(u, i, r, t, 1000)
    warm, rest = batches[: max(1, len(batches) - deltas)], batches[len(batches) - deltas:]
    out: dict[str, Any] = {"ratings": len(r), "source": source, "deltas": len(rest), "codecs": {}}
    base = settings.topic_prefix
    with tempfile.TemporaryDirectory(prefix="reco-bench-updates-") as tmp, \
            embedded_or_configured(dataclasses.replace(settings, topic_prefix=f"{base}upd{int(time.time())}.")) as s0:
        for codec in codecs:
            s = dataclasses.replace(s0, topic_prefix=f"{s0.topic_prefix}{codec}.", compression=codec, checkpoint_dir=str(Path(tmp) / codec))
            from streamproc.kafka import create_topics

            create_topics(s)
            w = TrainerWorker(s, registry=CollectorRegistry())
            for b in warm:
                w.learn(b)
            w.open()
            try:
                # the rows learned above count as delivered by deltas (as in a running trainer): the
                # snapshot goes out alone, on the model-snapshots topic
                w.model.export(full=False)
                w._reset_pending()
                t0 = time.perf_counter()
                chunks = w.publish_snapshot(wait=True)
                snapshot_s = time.perf_counter() - t0
                delta_s = []
                for b in rest:
                    w.learn(b)
                    t0 = time.perf_counter()
                    w.publish_delta()
                    delta_s.append(time.perf_counter() - t0)
            finally:
                w.close()
            topics = Topics.from_settings(s)
            t0 = time.perf_counter()
            snap = [m.value for m in read_all(s, topics.model_snapshots, idle_ms=300)]
            dels = [m.value for m in read_all(s, topics.model_updates, idle_ms=300)]
            read_s = time.perf_counter() - t0 - 0.6  # minus the idle waits that end the reads
            out["codecs"][codec] = {
                "snapshot_chunks": chunks,
                "snapshot_bytes_raw": sum(map(len, snap)),
                "snapshot_bytes_stored": _stored_sizes(snap, codec),
                "delta_bytes_raw_mean": round(float(np.mean([len(v) for v in dels])), 1) if dels else None,
                "delta_bytes_stored_mean": round(_stored_sizes(dels, codec) / len(dels), 1) if dels else None,
                "snapshot_compress_ms": _codec_ms(snap, codec)[0],
                "snapshot_decompress_ms": _codec_ms(snap, codec)[1],
                "snapshot_publish_ms": round(snapshot_s * 1000, 1),
                "delta_publish_ms_p50": round(1000 * float(np.median(delta_s)), 2) if delta_s else None,
                "replica_read_ms": round(max(read_s, 0.0) * 1000, 1),
            }
            log.info("%s: %s", codec, out["codecs"][codec])
    none = out["codecs"].get("none")
    if none:
        for c in out["codecs"].values():
            c["snapshot_size_ratio"] = round(c["snapshot_bytes_stored"] / none["snapshot_bytes_stored"], 3)
    return out


def _cmd_bench_updates(args: argparse.Namespace, settings: TrainerSettings) -> int:
    from trainer.bench.learn import DEFAULT_RATINGS

    out = run_bench(settings, ratings=args.ratings or str(DEFAULT_RATINGS), limit=args.limit, deltas=args.deltas,
                    codecs=tuple(c for c in args.codecs.split(",") if c))
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for c, r in out["codecs"].items():
            print(f"{c:7s} snapshot {r['snapshot_bytes_stored']:>10,} B ({r['snapshot_size_ratio']}) publish "
                  f"{r['snapshot_publish_ms']} ms, replica read {r['replica_read_ms']} ms")
    return 0


def register_bench(bench: argparse._SubParsersAction) -> None:
    """Add ``reco bench updates``."""
    p = bench.add_parser("updates", help="model-update bytes and publish/read time per codec (RECO_COMPRESSION)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--ratings", default="", help="MovieLens-style ratings CSV (default ml-latest-small, else synthetic)")
    p.add_argument("--limit", type=int, default=0, help="use only the first N ratings (0 = all)")
    p.add_argument("--deltas", type=int, default=20, help="deltas published after the snapshot (1,000 examples each)")
    p.add_argument("--codecs", default=",".join(CODECS), help="comma-separated codecs to compare")
    p.set_defaults(func=_cmd_bench_updates)
