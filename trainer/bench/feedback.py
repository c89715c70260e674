"""``reco bench feedback``: does the per-item "falling" flag (:mod:`trainer.feedback`) stay quiet on
stable items and catch an item whose comments turn negative?

Real reviews in time order (``--reviews``, default the Yelp sample beside the clone, else the
built-in demo data's comments). Star ratings stand in for the sentiment estimates (noisier and more
skewed than the sentiment head's estimates, so a hard test of false alarms):

``flagged_real_order``   items ever flagged with the reviews in their real order (real items may
                         really slip; 0 on the Yelp sample)
``flagged_shuffled``     items ever flagged over ``--trials`` runs with each item's reviews shuffled
                         among its own time slots (nothing changes over time: every flag is false)
``drops``                per drop (1, 1.5, 2 rating points): 400 comments drawn from the file's
                         rating distribution, the last 200 lowered by the drop; ``caught`` (share of
                         trials flagged after the change, within 200 comments), ``false_before``
                         (share flagged before it), ``median_delay`` / ``p90_delay`` (comments after
                         the change until the flag)

The anchor ``anchor_no_z`` runs the same with the magnitude rule alone (``z_min=0``): what the
standard-error condition buys. ``update_us_per_1000`` times :meth:`ItemFeedback.update` on batches
of 1,000 ratings and of 1,000 examples with 10 % comments.

``--head`` adds ``head``: the texts encoded (``RECO_MODEL_DIR``) and read by the model's own
sentiment head (HybridMF learning the reviews as comments, half of them with their rating), then
the same real-order and shuffled runs on those estimates, the head's AUC (positive >= 4 vs
negative <= 2, later half), and ``--trials``-capped injections: the busiest item's later half of
reviews replaced by negative reviews (<= 2) of other items, ``caught`` / ``median_delay`` checked
every 5 comments. Encoding real reviews on 2 CPU cores takes minutes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from streamproc.runtime import quantile
from trainer.feedback import FEEDBACK_COLUMNS, ItemFeedback

__all__ = ["register_bench", "run_bench"]

_F = FEEDBACK_COLUMNS.index("falling")
_COMMENT = 2
DROPS = (1.0, 1.5, 2.0)


#: Real reviews beside the clone (development only; the product never needs them).
DEFAULT_REVIEWS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "yelp-sample" / "reviews.jsonl"


def _reviews(path: str | None) -> tuple[list[str], np.ndarray, np.ndarray, list[str], str]:
    """(item ids, ratings (NaN if none), ratings' time order, texts, source) of the reviews."""
    if path is None and not DEFAULT_REVIEWS.is_file():
        from streamproc.demo_data import DemoData

        events = [e for e in DemoData(comment_share=1.0, click_share=0.0).events(5000) if e.get("rating") is not None]
        return ([e["item_id"] for e in events], np.array([e["rating"] for e in events], float), np.arange(len(events)),
                [e.get("text", "") for e in events], f"demo-data comments ({len(events):,}; pass --reviews FILE.jsonl for real reviews)")
    from streamproc.replay import load_reviews

    p = Path(path) if path is not None else DEFAULT_REVIEWS
    evs = [json.loads(v) for _, _, v in load_reviews(p)]
    evs = [e for e in evs if e.get("rating") is not None]
    return ([str(e["item_id"]) for e in evs], np.array([float(e["rating"]) for e in evs]), np.arange(len(evs)),
            [e.get("text") or "" for e in evs], f"{p.name} ({len(evs):,} rated reviews)")


def _flags(rows: np.ndarray, sent: np.ndarray, batch: int, fb: ItemFeedback) -> dict[int, int]:
    """Feed comments in order (``batch`` at a time); {row: index of the batch where first flagged}."""
    first: dict[int, int] = {}
    for i in range(0, len(rows), batch):
        r = rows[i : i + batch]
        fb.update(r, np.full(len(r), _COMMENT), np.full(len(r), np.nan), sent[i : i + batch])
        u = np.unique(r)
        for x in u[fb.columns(u)[:, _F] > 0].tolist():
            first.setdefault(x, i)
    return first


def _within_item_shuffle(rows: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    perm = np.arange(len(rows))
    for r in np.unique(rows):
        idx = np.flatnonzero(rows == r)
        perm[idx] = rng.permutation(idx)
    return perm


def _stationary(rows: np.ndarray, sent: np.ndarray, trials: int, params: dict[str, Any], perms: list[np.ndarray]) -> dict[str, Any]:
    real = len(_flags(rows, sent, 25, ItemFeedback(**params)))
    shuffled = sum(len(_flags(rows[p], sent[p], 25, ItemFeedback(**params))) for p in perms[:trials])
    return {"flagged_real_order": real, "flagged_shuffled": shuffled, "shuffles": min(trials, len(perms))}


def _drops(stars: np.ndarray, trials: int, params: dict[str, Any]) -> dict[str, Any]:
    lo, hi = float(stars.min()), float(stars.max())
    out = {}
    for drop in DROPS:
        rng = np.random.default_rng(int(drop * 10))
        delays, before = [], 0
        for _ in range(trials):
            x = rng.choice(stars, 400)
            x[200:] = np.clip(x[200:] - drop, lo, hi)
            fb = ItemFeedback(**params)
            at = None
            for i in range(400):
                fb.update(np.zeros(1, np.int64), np.full(1, _COMMENT), np.full(1, np.nan), x[i : i + 1])
                if fb.columns(np.zeros(1, np.int64))[0, _F] > 0:
                    at = i - 200
                    break
            if at is not None and at < 0:
                before += 1
            elif at is not None:
                delays.append(at)
        out[f"{drop:g}"] = {"caught": round(len(delays) / trials, 3), "false_before": round(before / trials, 3),
                            "median_delay": float(np.median(delays)) if delays else None,
                            "p90_delay": quantile(delays, 0.9)}
    return out


def _speed() -> dict[str, float]:
    rng = np.random.default_rng(0)
    out = {}
    for name, share in (("ratings", 0.0), ("comments_10pct", 0.1)):
        fb = ItemFeedback()
        rows = rng.integers(0, 10_000, 1000)
        kinds = np.where(rng.random(1000) < share, _COMMENT, 0)
        ratings = np.where(kinds == 0, rng.integers(1, 6, 1000).astype(float), np.nan)
        sent = np.where(kinds == _COMMENT, rng.normal(3.5, 1.0, 1000), np.nan)
        fb.update(rows, kinds, ratings, sent)
        best = min(_timed(lambda f=fb, a=(rows, kinds, ratings, sent): f.update(*a), 50) for _ in range(3))
        out[name] = round(best * 1e6, 1)
    return out


def _timed(fn: Any, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def _head(items: list[str], stars: np.ndarray, texts: list[str], rows: np.ndarray, trials: int, params: dict[str, Any],
          perms: list[np.ndarray]) -> dict[str, Any]:
    from streamproc.encoder import get_encoder
    from streamproc.examples import ExampleBatch
    from streamproc.settings import Settings
    from trainer.model import HybridMF

    enc = get_encoder(Settings())
    t0 = time.perf_counter()
    emb = np.vstack([enc.encode(texts[i : i + 32]) for i in range(0, len(texts), 32)])
    encode_s = time.perf_counter() - t0
    n = len(items)
    hide = (np.arange(n) * 2654435761 % 1000) < 500  # half arrive without their rating (deterministic)
    lo, hi = float(stars.min()), float(stars.max())

    def estimates(order: np.ndarray, emb_of: np.ndarray) -> np.ndarray:
        m = HybridMF(text_dim=emb.shape[1], seed=1, rating_min=lo, rating_max=hi)
        out = np.empty(n)
        for i in range(0, n, 50):
            o = order[i : i + 50]
            k = len(o)
            b = ExampleBatch.build(event_ids=[str(j) for j in o], user_ids=[f"u{j}" for j in o], item_ids=[items[j] for j in o],
                                   kinds=[_COMMENT] * k, targets=np.where(hide[o], np.nan, stars[emb_of[o]]).tolist(),
                                   event_times=np.arange(i, i + k, dtype=float).tolist(), published=[0.0] * k, processed=[0.0] * k,
                                   embeddings=emb[emb_of[o]], emb_rows=list(range(k)))
            m.learn_batch(b)
            out[i : i + k] = m.last_sentiment
        return out

    ident = np.arange(n)
    base = estimates(ident, ident)
    ok = ~np.isnan(base)
    later = ok & (ident >= n // 2) & ((stars >= 4) | (stars <= 2))
    pos, neg = base[later & (stars >= 4)], base[later & (stars <= 2)]
    auc = float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()) if len(pos) and len(neg) else None
    real = len(_flags(rows[ok], base[ok], 25, ItemFeedback(**params)))
    shuffled = 0
    for p in perms[: min(trials, 5)]:
        s = estimates(p, ident)
        good = ~np.isnan(s)
        shuffled += len(_flags(rows[p][good], s[good], 25, ItemFeedback(**params)))
    busy = int(np.bincount(rows).argmax())
    bidx = np.flatnonzero(rows == busy)
    cut = bidx[len(bidx) // 2 :]
    negatives = np.flatnonzero((stars <= lo + 1) & (rows != busy))
    delays: list[int] = []
    injections = min(trials, 5)
    for k in range(injections):
        emb_of = ident.copy()
        emb_of[cut] = np.random.default_rng(k).choice(negatives, len(cut))
        s = estimates(ident, emb_of)
        good = ~np.isnan(s)
        first = _flags(rows[good], s[good], 5, ItemFeedback(**params))
        if busy in first:
            at = ident[good][first[busy]]
            delays.append(int(((bidx >= cut[0]) & (bidx < at + 5)).sum()))
    return {"encode_s": round(encode_s, 1), "auc_pos_vs_neg": None if auc is None else round(auc, 4),
            "flagged_real_order": real, "flagged_shuffled": shuffled, "shuffles": min(trials, 5, len(perms)),
            "injected_item_reviews": len(bidx), "injected_caught": round(len(delays) / injections, 3),
            "injected_median_delay": float(np.median(delays)) if delays else None}


def run_bench(reviews: str | None = None, trials: int = 20, head: bool = False) -> dict[str, Any]:
    """The numbers of ``reco bench feedback`` (see the module docstring)."""
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials!r}")
    items, stars, _, texts, source = _reviews(reviews)
    ids: dict[str, int] = {}
    rows = np.array([ids.setdefault(x, len(ids)) for x in items], np.int64)
    params = ItemFeedback().get_params()
    perms = [_within_item_shuffle(rows, k) for k in range(trials)]
    out: dict[str, Any] = {"bench": "feedback", "source": source, "reviews": len(items), "items": len(ids), "params": params,
                           "stars": {**_stationary(rows, stars, trials, params, perms), "drops": _drops(stars, trials * 5, params)}}
    no_z = {**params, "z_min": 0.0}
    out["anchor_no_z"] = {**_stationary(rows, stars, trials, no_z, perms), "drops": _drops(stars, trials * 5, no_z)}
    out["update_us_per_1000"] = _speed()
    if head:
        out["head"] = _head(items, stars, texts, rows, trials, params, perms)
    return out


def _cmd_bench_feedback(args: argparse.Namespace, settings: Any) -> int:
    from streamproc.runtime import print_result

    print_result(run_bench(args.reviews, args.trials, args.head), args.json)
    return 0


def register_bench(bench: argparse._SubParsersAction) -> None:
    """Add ``reco bench feedback``."""
    p = bench.add_parser("feedback", help="per-item falling-sentiment flag: false alarms on stable items, delay on a real fall")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--reviews", metavar="FILE", default=None,
                   help="JSON lines with item_id, rating, text (default: ../shared/datasets/yelp-sample/reviews.jsonl beside the clone)")
    p.add_argument("--trials", type=int, default=20, help="shuffled runs (and 5x as many synthetic drops per size)")
    p.add_argument("--head", action="store_true", help="also encode the texts and use the model's sentiment head (slow)")
    p.set_defaults(func=_cmd_bench_feedback)
