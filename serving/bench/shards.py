"""``reco bench shards``: what user-partitioned trainers would cost in ranking quality.

A simulation of the multi-trainer design in ``docs/scaling.md`` on a real stream (ml-latest-small
beside the clone, else the built-in demo data): ``S`` trainers, each a real
:class:`~trainer.model.HybridMF`, each learning only the events of its users (``crc32(user) % S``,
as Kafka's partitioner keys the events topic by user). Item-side state is shared every ``sync``
events, as the item-row compacted topic would carry it: each item's factors and bias become the
mean over the shards that know it (weighted by their event counts of the item), its popularity the
sum of the shards' decayed counts, and an item one shard has never seen gets a row there. The
co-occurrence pairs are *not* shared (each shard learns pairs from its own users' sequences only):
the simulation measures that loss too.

Protocol: prequential, test-then-train, as ``reco bench quality``: every ``every``-th positive
event (rating >= ``positive``, or a click) is ranked by its user's shard, before the shard learns
it, against every item that shard knows minus the user's earlier items; an item the shard does not
know is a miss. Events are learned in chunks of ``chunk`` (an evaluated event is ranked before its
chunk is learned, in every configuration alike). Freshness: an item-side change reaches the other
shards ``sync`` events later, i.e. ``sync / events_per_s`` seconds.
"""

from __future__ import annotations

import argparse
import math
import time
import zlib
from typing import Any

import numpy as np

from serving.settings import ServingSettings
from streamproc.runtime import print_result

__all__ = ["ItemSharing", "simulate", "run_shards", "register_bench"]


def _shard_of(user: str, shards: int) -> int:
    return zlib.crc32(user.encode()) % shards


def _sub_batch(stream: Any, idx: np.ndarray) -> Any:
    from streamproc.examples import ExampleBatch

    t = stream.times[idx]
    return ExampleBatch.build(event_ids=[""] * len(idx), user_ids=[stream.users[i] for i in idx.tolist()],
                              item_ids=[stream.items[i] for i in idx.tolist()], kinds=stream.kinds[idx],
                              targets=stream.ratings[idx], event_times=t, published=t, processed=t,
                              emb_rows=np.full(len(idx), -1, np.int32), embeddings=None)


class ItemSharing:
    """Item-side sharing between shards (see the module docstring): what the item-row compacted
    topic would carry. Popularity is merged by increments: each shard contributes the counts it
    added since the previous sharing (its decayed counts minus what it was given then), so no
    event is counted twice however often the state is shared."""

    def __init__(self) -> None:
        self._items: list[str] = []
        self._given: list[np.ndarray] = []  # per shard: popularity handed to it last time, by self._items
        self._clock: list[float] = []  # per shard: its clock then

    def __call__(self, models: list[Any]) -> int:
        ids: dict[str, None] = dict.fromkeys(self._items)
        for m in models:
            ids.update(dict.fromkeys(x for x in m._iids if x is not None))
        items = list(ids)
        if not items:
            return 0
        n, k, H = len(items), models[0].n_factors, len(models[0].popularity_half_lives)
        q_sum, b_sum, w_sum, pop = np.zeros((n, k)), np.zeros(n), np.zeros(n), np.zeros((n, H))
        old = len(self._items)
        rows_of = []
        for s, m in enumerate(models):
            rows = np.array([m._imap.get(x, -1) for x in items], np.int64)
            has = rows >= 0
            r = rows[has]
            w = np.maximum(m._CNT_I[r].astype(np.float64), 1e-3)
            q_sum[has] += m._Q[r] * w[:, None]
            b_sum[has] += m._BI[r] * w
            w_sum[has] += w
            mine = np.zeros((n, H))
            mine[has] = m._RPOP[r] * np.exp(-(m._clock - m._RPOPT[r])[:, None] / m._pop_taus[None, :])
            if self._given:  # what this shard was given last time, decayed on its clock: not its own
                decay = np.exp(-(m._clock - self._clock[s]) / m._pop_taus)[None, :]
                given = self._given[s] * decay
                mine[:old] = np.maximum(mine[:old] - given, 0.0)
                if s == 0:
                    pop[:old] += given  # the shared counts once (decayed on shard 0's clock)
            pop += mine
            rows_of.append(rows)
        q, b = (q_sum / np.maximum(w_sum, 1e-9)[:, None]).astype(np.float32), (b_sum / np.maximum(w_sum, 1e-9)).astype(np.float32)
        known = w_sum > 0
        for m, rows in zip(models, rows_of, strict=True):
            missing = [x for x, r in zip(items, rows.tolist(), strict=True) if r < 0]
            if missing:
                m._rows(missing, False)  # a row for every item another shard knows
            r = np.array([m._imap[x] for x in items], np.int64)
            m._Q[r[known]], m._BI[r[known]] = q[known], b[known]
            m._RPOP[r], m._RPOPT[r] = pop, m._clock
        self._items, self._given, self._clock = items, [pop.copy() for _ in models], [m._clock for m in models]
        return n


def simulate(stream: Any, params: dict[str, Any], *, shards: int, sync: int, every: int = 5, positive: float = 4.0,
             chunk: int = 200) -> dict[str, Any]:
    """HR@10 / NDCG@10 of ``shards`` user-partitioned trainers sharing item state every ``sync``
    events (0 = never)."""
    from streamproc.examples import KIND_CLICK
    from trainer.model import HybridMF

    if shards < 1 or sync < 0 or every < 1 or chunk < 1:
        raise ValueError(f"shards={shards!r} (>= 1), sync={sync!r} (>= 0), every={every!r}, chunk={chunk!r} (>= 1)")
    models = [HybridMF(**params) for _ in range(shards)]
    owner = np.array([_shard_of(u, shards) for u in stream.users], np.int64)
    seen: dict[str, set[str]] = {}
    hits = n_eval = unknown = 0
    ndcg = 0.0
    positives = (stream.kinds == KIND_CLICK) | (np.nan_to_num(stream.ratings, nan=-1.0) >= positive)
    npos = 0
    since_sync = 0
    share = ItemSharing()
    t0 = time.perf_counter()
    for lo in range(0, len(stream), chunk):
        hi = min(len(stream), lo + chunk)
        for e in range(lo, hi):
            if not positives[e]:
                continue
            npos += 1
            if npos % every:
                continue
            user, item = stream.users[e], stream.items[e]
            m = models[owner[e]]
            n_eval += 1
            r = m._imap.get(item)
            if r is None:
                unknown += 1
                continue  # an item the shard does not know: a miss (a user it does not know: popularity)
            ids, scores = m.rank_scores(user)
            mine = seen.get(user, ())
            excl = [m._imap[x] for x in mine if x in m._imap and x != item]
            s = scores.copy()
            if excl:
                s[excl] = -np.inf
            rank = int((s > s[r]).sum())
            if rank < 10:
                hits += 1
                ndcg += 1.0 / math.log2(rank + 2)
        for s_ in range(shards):
            idx = np.flatnonzero(owner[lo:hi] == s_) + lo
            if len(idx):
                models[s_].learn_batch(_sub_batch(stream, idx))
        for e in range(lo, hi):
            seen.setdefault(stream.users[e], set()).add(stream.items[e])
        since_sync += hi - lo
        if shards > 1 and sync and since_sync >= sync:
            share(models)
            since_sync = 0
    n = max(n_eval, 1)
    return {"shards": shards, "sync_events": sync, "hr10": round(hits / n, 4), "ndcg10": round(ndcg / n, 4), "n_evaluated": n_eval,
            "target_item_unknown_to_shard": round(unknown / n, 4), "seconds": round(time.perf_counter() - t0, 1)}


def run_shards(settings: ServingSettings, *, shard_counts: tuple[int, ...] = (1, 2, 4), syncs: tuple[int, ...] = (0, 1_000, 10_000),
               limit: int = 0, every: int = 5) -> dict[str, Any]:
    from trainer.bench.quality import DEFAULT_DATASET, demo_stream, load_stream

    stream = load_stream(dataset=DEFAULT_DATASET) if DEFAULT_DATASET.is_dir() else demo_stream()
    if limit:
        from trainer.bench.quality import Stream

        stream = Stream(stream.users[:limit], stream.items[:limit], stream.kinds[:limit], stream.ratings[:limit], stream.times[:limit],
                        [None] * min(limit, len(stream)), stream.source)
    from trainer.model import HybridMF

    params = HybridMF.from_settings(settings).get_params()
    params["rank_sample"] = 0.0
    runs = []
    for s in shard_counts:
        for sync in (syncs if s > 1 else (0,)):
            runs.append(simulate(stream, params, shards=s, sync=sync, every=every))
    base = runs[0]["hr10"]
    for r in runs:
        r["hr10_vs_one_trainer"] = round(r["hr10"] / base, 3) if base else None
        r["item_side_delay_s_at_2000_events_per_s"] = round(r["sync_events"] / 2000.0, 2) if r["shards"] > 1 and r["sync_events"] else None
    return {"source": stream.source, "events": len(stream), "every_nth_positive": every, "runs": runs,
            "shared": "item factors, item bias, popularity (sum of decayed counts); not the co-occurrence pairs"}


def _cmd(args: argparse.Namespace, settings: ServingSettings) -> int:
    out = run_shards(settings, shard_counts=tuple(int(x) for x in args.shards.split(",")),
                     syncs=tuple(int(x) for x in args.syncs.split(",")), limit=args.limit, every=args.every)
    print_result(out, args.json)
    return 0


def register_bench(bench: argparse._SubParsersAction) -> None:
    """Add ``reco bench shards``."""
    p = bench.add_parser("shards", help="simulated user-partitioned trainers: prequential HR@10 with 1, 2, 4 shards")
    p.add_argument("--json", action="store_true")
    p.add_argument("--shards", default="1,2,4", help="comma-separated shard counts")
    p.add_argument("--syncs", default="0,1000,10000", help="item-state sharing intervals in events (0 = never)")
    p.add_argument("--limit", type=int, default=0, help="first N events only (0 = all)")
    p.add_argument("--every", type=int, default=5, help="evaluate every N-th positive event")
    p.set_defaults(func=_cmd)
