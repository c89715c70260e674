"""``reco bench encoder`` (:func:`encoder_bench`): the stream worker's comment encoding on real
reviews against the plain fp32 transformers model in the same run; compares their embeddings
(cosine, and the AUC of a sentiment head trained on each), and keeps the short-text figure.
``--compare`` runs other backends through the same path in the same rounds (one figure each).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from streamproc.runtime import print_json
from streamproc.settings import Settings

__all__ = ["encoder_bench", "review_texts", "sentiment_auc", "RawFp32", "register_bench"]

# ---------------------------------------------------------------------- reco bench encoder
#: Real reviews beside the clone (development only; the product never needs them).
DEFAULT_REVIEWS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "yelp-sample" / "reviews.jsonl"
ENCODER_TARGETS = {"comments_per_s": 100.0, "mean_cosine_vs_fp32": 0.98, "sentiment_auc_drop": 0.01, "tags_comments_per_s": 600.0}


def review_texts(path: str | Path | None, n: int | None = None) -> tuple[list[str], list[float | None], str]:
    """Texts and ratings (``None`` when a review has none) in time order, and their source in words.

    ``path`` None: :data:`DEFAULT_REVIEWS` where it sits beside the clone, else the built-in demo
    data's comments (short, with ratings) and a source that says so. A named file that is missing or
    malformed is a :class:`~streamproc.replay.DatasetError` naming it.
    """
    import json

    from streamproc.replay import load_reviews

    if path is None and not DEFAULT_REVIEWS.is_file():
        from streamproc.demo_data import DemoData

        events = list(DemoData(comment_share=1.0, click_share=0.0).events(n or 2000))
        return ([e["text"] for e in events], [e.get("rating") for e in events],
                f"demo-data comments ({len(events):,}; no reviews file beside the clone: pass --reviews FILE.jsonl for real reviews)")
    path = Path(path) if path is not None else DEFAULT_REVIEWS
    texts: list[str] = []
    ratings: list[float | None] = []
    for _, _, value in load_reviews(path):
        ev = json.loads(value)
        if ev.get("text"):
            texts.append(ev["text"])
            ratings.append(ev.get("rating"))
    if not texts:
        from streamproc.replay import DatasetError

        raise DatasetError(f"--reviews {path}: no review has a text")
    if n:
        texts, ratings = texts[:n], ratings[:n]
    return texts, ratings, f"{path.name} ({len(texts):,} reviews)"


def sentiment_auc(emb: np.ndarray, ratings: Sequence[float | None], *, l2: float = 1.0) -> tuple[float | None, int, int]:
    """AUC of a logistic-regression sentiment head on embeddings: trained on the first half of the
    reviews (positive: rating >= 4, negative: <= 2; others and unrated left out), scored on the
    second half. Returns (AUC or None when a half lacks a class, train size, test size)."""
    r = np.array([np.nan if x is None else float(x) for x in ratings])
    keep = (r >= 4) | (r <= 2)
    y = (r >= 4).astype(np.float64)
    half = len(r) // 2
    tr = np.flatnonzero(keep[:half])
    te = half + np.flatnonzero(keep[half:])
    if len(np.unique(y[tr])) < 2 or len(np.unique(y[te])) < 2:
        return None, len(tr), len(te)
    w = _logistic_fit(emb[tr].astype(np.float64), y[tr], l2=l2)
    scores = np.hstack([emb[te], np.ones((len(te), 1))]) @ w
    return round(_auc(scores, y[te]), 4), len(tr), len(te)


def _logistic_fit(x: np.ndarray, y: np.ndarray, *, l2: float, iters: int = 30) -> np.ndarray:
    """L2-regularised logistic regression (bias unpenalised) by Newton's method."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(xb.shape[1])
    reg = np.full(xb.shape[1], l2)
    reg[-1] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(xb @ w, -30, 30)))
        g = xb.T @ (p - y) + reg * w
        h = (xb * (p * (1 - p))[:, None]).T @ xb + np.diag(reg + 1e-9)
        step = np.linalg.solve(h, g)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def _auc(scores: np.ndarray, y: np.ndarray) -> float:
    """Probability that a positive scores above a negative (ties count half)."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    s = scores[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


class RawFp32:
    """The anchor: the plain transformers model, fp32, batches of ``batch_size`` texts in the order
    given, padded to the batch's longest text, truncated only at the model's maximum (what the
    encoder did before the ONNX backend and length-ordered batching)."""

    def __init__(self, model_dir: str, *, threads: int, batch_size: int) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(threads)
        self.batch_size = batch_size
        self._torch = torch
        self._tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self._model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
        from streamproc.encoder import _max_tokens

        self.max_tokens = _max_tokens(model_dir, self._tok, self._model.config)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        torch = self._torch
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                tok = self._tok(list(texts[i : i + self.batch_size]), padding=True, truncation=True,
                                max_length=self.max_tokens, return_tensors="pt")
                h = self._model(**tok).last_hidden_state
                m = tok["attention_mask"].unsqueeze(-1).to(h.dtype)
                out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=1).numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _interleaved(texts: list[str], fns: dict[str, Callable[[list[str]], np.ndarray]], rounds: int,
                 cpu: dict[str, float] | None = None) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Every function over ``texts`` in ``rounds`` parts, taking turns part by part (load from other
    processes then disturbs each alike); embeddings and seconds per function. ``cpu`` gets the
    process's CPU seconds per function (steadier than seconds on a shared machine)."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in fns}
    secs = {k: 0.0 for k in fns}
    if cpu is not None:
        cpu.update({k: 0.0 for k in fns})
    step = -(-len(texts) // max(1, rounds))
    names = list(fns)
    for r, start in enumerate(range(0, len(texts), step)):
        part = texts[start : start + step]
        for k in names[r % len(names):] + names[: r % len(names)]:
            t0, c0 = time.perf_counter(), time.process_time()
            parts[k].append(fns[k](part))
            secs[k] += time.perf_counter() - t0
            if cpu is not None:
                cpu[k] += time.process_time() - c0
    return {k: np.concatenate(v) for k, v in parts.items()}, secs


def encoder_bench(settings: Settings, *, reviews: str | None = None, n: int | None = None, tags: int = 2000,
                  rounds: int = 6, single: int = 50, compare: Sequence[str] = ()) -> dict[str, Any]:
    """``reco bench encoder``: the worker's encoding path against the plain fp32 model on real reviews
    (throughput, cosine, sentiment AUC), the short-text figure on tags, and peak memory.

    ``compare``: other backends, each through its own micro-batcher in the same interleaved rounds;
    their figures go under ``"compare"`` (``peak_rss_mb`` then counts every backend loaded).
    """
    import os
    import resource

    from streamproc.encoder import MicroBatcher, TextEncoder, get_encoder
    from streamproc.replay import bench_texts

    texts, ratings, source = review_texts(reviews, n)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    enc = get_encoder(settings)
    load_s = time.perf_counter() - t0
    raw = RawFp32(settings.encoder_dir, threads=settings.torch_threads, batch_size=settings.encode_batch_size)
    bs = settings.encode_batch_size
    enc.encode(texts[:bs])  # warm-up, both
    raw.encode(texts[:bs])
    others = {b: TextEncoder(settings.encoder_dir, threads=settings.torch_threads, backend=b,
                             max_tokens=settings.encoder_max_tokens, batch_tokens=settings.encoder_batch_tokens,
                             cache_dir=settings.encoder_cache_dir)
              for b in dict.fromkeys(compare) if b != enc.backend}
    for other in others.values():
        other.encode(texts[:bs])
    batchers = {"worker": MicroBatcher.from_settings(settings, enc.encode)}  # the stream worker's path
    batchers.update({b: MicroBatcher.from_settings(settings, e.encode) for b, e in others.items()})

    def worker_path(mb: MicroBatcher) -> Callable[[list[str]], np.ndarray]:
        return lambda part: np.stack([f.result() for f in mb.submit_many(part)])

    fns = {k: worker_path(mb) for k, mb in batchers.items()}
    fns["raw"] = raw.encode
    cpu: dict[str, float] = {}
    tcpu: dict[str, float] = {}
    try:
        emb, secs = _interleaved(texts, fns, rounds, cpu)
        cos = (emb["worker"] * emb["raw"]).sum(axis=1)
        auc, n_train, n_test = sentiment_auc(emb["worker"], ratings)
        auc32, _, _ = sentiment_auc(emb["raw"], ratings)
        short, short_source = bench_texts(tags)
        enc.encode(short[:bs])
        for other in others.values():
            other.encode(short[:bs])
        temb, tsecs = _interleaved(short, fns, rounds, tcpu)
    finally:
        for mb in batchers.values():
            mb.close()
    sample = texts[:single]
    t0 = time.perf_counter()
    for t in sample:
        enc.encode([t])
    single_s = time.perf_counter() - t0
    out: dict[str, Any] = {
        "dataset": source, "texts": len(texts), "model": settings.encoder_dir,
        "backend": enc.backend, "precision": enc.precision, "device": enc.device, "max_tokens": enc.max_tokens, "batch_tokens": enc.batch_tokens,
        "batch_size": bs, "max_wait_ms": settings.encode_max_wait_ms, "torch_threads": settings.torch_threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""), "load_s": round(load_s, 2),
        "comments_per_s": round(len(texts) / secs["worker"], 1),
        "raw_fp32_comments_per_s": round(len(texts) / secs["raw"], 1),
        "speedup_vs_raw_fp32": round(secs["raw"] / secs["worker"], 2),
        "comments_per_cpu_s": round(len(texts) / cpu["worker"], 1),
        "raw_fp32_comments_per_cpu_s": round(len(texts) / cpu["raw"], 1),
        "mean_cosine_vs_fp32": round(float(cos.mean()), 4),
        "p05_cosine_vs_fp32": round(float(np.quantile(cos, 0.05)), 4),
        "min_cosine_vs_fp32": round(float(cos.min()), 4),
        "sentiment_auc": auc, "sentiment_auc_fp32": auc32, "sentiment_train": n_train, "sentiment_test": n_test,
        "single_comments_per_s": round(len(sample) / single_s, 1),
        "tags_dataset": short_source, "tags": len(short),
        "tags_comments_per_s": round(len(short) / tsecs["worker"], 1),
        "tags_raw_fp32_comments_per_s": round(len(short) / tsecs["raw"], 1),
        "tags_mean_cosine_vs_fp32": round(float((temb["worker"] * temb["raw"]).sum(axis=1).mean()), 4),
    }
    if others:
        out["compare"] = {}
        for b in ["worker", *others]:
            bcos = (emb[b] * emb["raw"]).sum(axis=1)
            out["compare"][enc.backend if b == "worker" else b] = {
                "precision": (enc if b == "worker" else others[b]).precision,
                "comments_per_s": round(len(texts) / secs[b], 1), "speedup_vs_raw_fp32": round(secs["raw"] / secs[b], 2),
                "comments_per_cpu_s": round(len(texts) / cpu[b], 1), "cpu_speedup_vs_raw_fp32": round(cpu["raw"] / cpu[b], 2),
                "mean_cosine_vs_fp32": round(float(bcos.mean()), 4), "min_cosine_vs_fp32": round(float(bcos.min()), 4),
                "sentiment_auc": sentiment_auc(emb[b], ratings)[0],
                "tags_comments_per_s": round(len(short) / tsecs[b], 1), "tags_comments_per_cpu_s": round(len(short) / tcpu[b], 1)}
        del others
    del raw
    import torch

    if torch.cuda.is_available():  # reported separately, only where a GPU is present
        gpu = TextEncoder.from_settings(dataclasses.replace(settings, encoder_device="cuda"))
        gpu.encode(texts[:bs])
        t0 = time.perf_counter()
        gemb = gpu.encode(texts)
        out["gpu_comments_per_s"] = round(len(texts) / (time.perf_counter() - t0), 1)
        out["gpu_mean_cosine_vs_fp32"] = round(float((gemb * emb["raw"]).sum(axis=1).mean()), 4)
        out["gpu_sentiment_auc"] = sentiment_auc(gemb, ratings)[0]
        out["gpu_name"] = torch.cuda.get_device_name(0)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out["cpus"] = os.cpu_count()
    out["load_avg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]  # other processes' load, start and end
    tg = ENCODER_TARGETS
    out["targets"] = {"comments_per_s": tg["comments_per_s"], "mean_cosine_vs_fp32": tg["mean_cosine_vs_fp32"],
                      "sentiment_auc_min": None if auc32 is None else round(auc32 - tg["sentiment_auc_drop"], 4),
                      "tags_comments_per_s": tg["tags_comments_per_s"]}
    out["meets_targets"] = bool(out["comments_per_s"] >= tg["comments_per_s"] and out["mean_cosine_vs_fp32"] >= tg["mean_cosine_vs_fp32"]
                                and (auc is None or auc32 is None or auc >= auc32 - tg["sentiment_auc_drop"])
                                and out["tags_comments_per_s"] >= tg["tags_comments_per_s"])
    return out


def _cmd_bench_encoder(args: argparse.Namespace, settings: Settings) -> int:
    compare = [b.strip() for b in (args.compare or "").split(",") if b.strip()]
    from streamproc.encoder import BACKENDS

    bad = [b for b in compare if b not in BACKENDS or b == "auto"]
    if bad:
        raise SystemExit(f"--compare {args.compare}: {', '.join(bad)} not among {', '.join(b for b in BACKENDS if b != 'auto')}")
    out = encoder_bench(settings, reviews=args.reviews, n=args.n, tags=args.tags, rounds=args.rounds, single=args.single,
                        compare=compare)
    if args.json:
        print_json(out)
    else:
        print(f"{out['comments_per_s']:.0f} reviews/s through the worker's encoder ({out['backend']}), plain fp32 model "
              f"{out['raw_fp32_comments_per_s']:.0f}/s; cosine to fp32 {out['mean_cosine_vs_fp32']}, sentiment AUC "
              f"{out['sentiment_auc']} (fp32 {out['sentiment_auc_fp32']}); short tags {out['tags_comments_per_s']:.0f}/s; "
              f"peak RSS {out['peak_rss_mb']:.0f} MB")
    return 0


def register_bench(bench: argparse._SubParsersAction) -> None:
    p = bench.add_parser("encoder", help="comment encoder on real reviews: the worker's path vs the plain fp32 model (speed, cosine, sentiment AUC)")
    p.add_argument("--reviews", metavar="JSONL", help="reviews file (user_id, item_id, rating, time, text per line); "
                   "default: ../shared/datasets/yelp-sample/reviews.jsonl beside the clone, else built-in demo comments")
    p.add_argument("--n", type=int, default=None, help="use only the first N reviews (default: all)")
    p.add_argument("--tags", type=int, default=2000, help="short texts for the short-comment figure (ml-latest-small tags, else demo comments)")
    p.add_argument("--single", type=int, default=50, help="reviews encoded one at a time for the low-load number")
    p.add_argument("--rounds", type=int, default=6, help="interleaved rounds of the plain model vs the worker's path")
    p.add_argument("--compare", metavar="BACKENDS", default="", help="comma-separated backends also run through the worker's "
                   "path in the same rounds, e.g. torch-bf16,onnx-int8 (per-backend figures under \"compare\")")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_bench_encoder)
