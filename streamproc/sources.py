"""The events a command publishes: a MovieLens-style dataset, a reviews file, or the built-in demo
generator (``reco replay``, ``reco load``, ``reco demo`` share the flags and the loader).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Iterable
from typing import Any

from streamproc.errors import RecoError

__all__ = ["EventSource", "add_source_args", "event_source"]


@dataclasses.dataclass
class EventSource:
    """What ``reco demo`` / ``reco replay`` publish: events (a list, or an endless generator for
    the demo data), how many (None: no end), the catalogue serving shows, and a one-line label."""

    events: Iterable[tuple[float, str, bytes]]
    total: int | None
    catalog: dict[str, Any] | None
    label: str
    generated: bool


def add_source_args(p: argparse.ArgumentParser, *, dataset_flag: bool = True) -> None:
    """``--dataset`` / ``--reviews`` / the demo generator's ``--users --items --seed``."""
    if dataset_flag:
        p.add_argument("--dataset", metavar="DIR", help="MovieLens-style directory (ratings.csv, optional tags.csv, movies.csv) "
                                                        "instead of the built-in demo data")
    p.add_argument("--reviews", metavar="FILE", help='JSON lines {"user_id","item_id","rating","time","text"} instead of the demo data')
    p.add_argument("--users", type=int, default=500, help="demo data: users (default 500)")
    p.add_argument("--items", type=int, default=1000, help="demo data: catalogue items (default 1000)")
    p.add_argument("--seed", type=int, default=42, help="demo data: seed; the same seed gives the same data (default 42)")
    p.add_argument("--comments", type=float, default=0.15, help="demo data: share of events that are comments (default 0.15)")


def event_source(args: argparse.Namespace, *, n: int | None = None, rate: float = 100.0, start: float | None = None) -> EventSource:
    """The events named by :func:`add_source_args`: a dataset, a reviews file, or generated demo
    data (``n`` events, None = without end, event times ``1/rate`` apart from ``start``)."""
    from streamproc.replay import active_users, load_catalog, load_events, load_reviews

    dataset, reviews = getattr(args, "dataset", None), getattr(args, "reviews", None)
    if dataset and reviews:
        raise RecoError("pass either --dataset DIR or --reviews FILE, not both")
    if dataset:
        evs = load_events(dataset)
        catalog = load_catalog(dataset) or {"source": str(dataset), "items": {}}
        catalog["users"] = active_users(evs, catalog)
        return EventSource(evs, len(evs), catalog, f"{len(evs):,} events from {dataset}", False)
    if reviews:
        evs = load_reviews(reviews)
        catalog = {"source": str(reviews), "items": {}, "users": active_users(evs, None)}
        return EventSource(evs, len(evs), catalog, f"{len(evs):,} reviews from {reviews}", False)
    from streamproc.demo_data import DemoData

    if not 0 <= args.comments <= 1:
        raise RecoError(f"--comments must be a share between 0 and 1, got {args.comments}")
    try:
        demo = DemoData(args.users, args.items, args.seed, comment_share=args.comments,
                        click_share=min(0.45, 1.0 - args.comments))
    except ValueError as exc:
        raise RecoError(f"demo data: {exc}") from None
    start = time.time() if start is None else start
    label = (f"generated demo data: {args.users:,} users, {args.items:,} items, seed {args.seed}"
             + ("" if n is None else f", {n:,} events"))
    return EventSource(demo.serialized(n, rate=rate, start=start), n, demo.catalog(), label, True)
