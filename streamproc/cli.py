"""``reco``: the command line. Each package contributes commands through the ``reco.commands``
entry point group (``register(commands, bench)``), so imports keep running one way
(streamproc ← trainer ← serving) while one program serves every role.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from importlib.metadata import entry_points
from typing import Any

from streamproc.errors import RecoError
from streamproc.settings import Settings
from streamproc.topics import Topics

__all__ = ["main", "embedded_or_configured", "print_json", "DEFAULT_LOCAL_BOOTSTRAP", "client_settings", "EventSource",
           "add_source_args", "event_source"]

log = logging.getLogger("reco")
DEFAULT_LOCAL_BOOTSTRAP = "127.0.0.1:9092"


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False, default=str))


def print_result(obj: dict[str, Any], as_json: bool) -> None:
    """A bench's result: one JSON object (``--json``) or ``key: value`` lines."""
    if as_json:
        print_json(obj)
    else:
        for k, v in obj.items():
            print(f"{k}: {v}")


def client_settings(settings: Settings) -> Settings:
    """Client commands with no RECO_KAFKA_BOOTSTRAP talk to `reco broker`'s default address."""
    if settings.kafka_bootstrap:
        return settings
    return Settings(**{**settings.__dict__, "kafka_bootstrap": DEFAULT_LOCAL_BOOTSTRAP})


@contextlib.contextmanager
def embedded_or_configured(settings: Settings, *, create: bool = True) -> Iterator[Settings]:
    """Yield settings pointing at Kafka: the configured cluster, or a freshly started embedded
    broker when ``RECO_KAFKA_BOOTSTRAP`` is unset (stopped on exit). Topics are created."""
    from streamproc.broker import EmbeddedBroker, wait_for_kafka
    from streamproc.kafka import create_topics

    if settings.kafka_bootstrap:
        wait_for_kafka(settings.kafka_bootstrap, 30, **settings.kafka_client_config())
        if create:
            create_topics(settings)
        yield settings
        return
    with EmbeddedBroker(settings.embedded_port) as broker:
        log.info("embedded broker (Tansu, memory-only) on %s", broker.bootstrap)
        s = Settings(**{**settings.__dict__, "kafka_bootstrap": broker.bootstrap})
        if create:
            create_topics(s)
        yield s


# ---------------------------------------------------------------------------------- commands
def _cmd_broker(args: argparse.Namespace, settings: Settings) -> int:
    from streamproc.broker import EmbeddedBroker

    if settings.kafka_bootstrap:
        print(f"RECO_KAFKA_BOOTSTRAP={settings.kafka_bootstrap} is set: not starting an embedded broker", file=sys.stderr)
        return 2
    broker = EmbeddedBroker(args.port or settings.embedded_port or 9092, quiet=not args.verbose)
    stop = _stop_on_signals()
    with broker:
        if args.create_topics:
            from streamproc.kafka import create_topics

            create_topics(Settings(**{**settings.__dict__, "kafka_bootstrap": broker.bootstrap}))
        print(f"embedded broker listening on {broker.bootstrap} (memory-only; Ctrl-C to stop)", flush=True)
        while not stop["now"] and broker.running:
            time.sleep(0.2)
    print("broker stopped", file=sys.stderr)
    return 0


def _cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    from streamproc.kafka import create_topics

    report = create_topics(client_settings(settings))
    print_json(report)
    return 0


def _cmd_publish(args: argparse.Namespace, settings: Settings) -> int:
    from streamproc.publisher import EventPublisher

    if args.type == "item":
        return _cmd_publish_item(args, settings)
    if not args.user or not args.item:
        raise RecoError(f"{'user' if not args.user else 'item'}: --{'user' if not args.user else 'item'} is required for a {args.type} event")
    event: dict[str, Any] = {"type": args.type, "user_id": args.user, "item_id": args.item}
    if args.event_id:
        event["event_id"] = args.event_id
    if args.event_time is not None:
        event["event_time"] = args.event_time
    if args.rating is not None:
        event["rating"] = args.rating
    if args.type == "rating" and args.rating is None:
        raise RecoError("rating: --rating is required for a rating event")
    if args.type == "comment":
        event["text"] = args.text if args.text is not None else ""
    with EventPublisher(client_settings(settings)) as pub:
        event_id = pub.publish(event)
    print_json({"published": event_id, "topic": pub.topic})
    return 0


def _cmd_publish_item(args: argparse.Namespace, settings: Settings) -> int:
    """``reco publish item --item ID --title T [--category C ...] [--description D] [--unavailable]``."""
    from streamproc.publisher import ItemPublisher

    if not args.item:
        raise RecoError("item_id: --item is required")
    with ItemPublisher(client_settings(settings)) as pub:
        if args.remove:
            pub.remove(args.item)
            print_json({"removed": args.item, "topic": pub.topic})
            return 0
        if args.title is None:
            raise RecoError("title: --title is required for an item record (or --remove)")
        rec: dict[str, Any] = {"item_id": args.item, "title": args.title,
                               "categories": [c.strip() for raw in args.category or [] for c in raw.split(",") if c.strip()],
                               "available": not args.unavailable}
        if args.description is not None:
            rec["description"] = args.description
        if args.updated_at is not None:
            rec["updated_at"] = args.updated_at
        item_id = pub.publish(rec)
    print_json({"published": item_id, "topic": pub.topic})
    return 0


# ------------------------------------------------------------------ event sources
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


def _cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from streamproc.replay import replay

    if args.dataset_dir and args.dataset:
        raise RecoError("pass the dataset once: reco replay DIR or reco replay --dataset DIR")
    args.dataset = args.dataset or args.dataset_dir
    rate = None if args.speed == "max" else _rate(args.speed, "--speed", max_ok=True)
    src = event_source(args, n=args.limit or 100_000, rate=rate or 1000.0, start=None)
    events = src.events if src.generated or args.limit is None else list(src.events)[: args.limit]
    total = src.total if args.limit is None else min(args.limit, src.total or args.limit)
    with (embedded_or_configured(settings) if args.embedded else contextlib.nullcontext(client_settings(settings))) as s:
        from streamproc.items import catalog_records
        from streamproc.publisher import publish_items

        n_items = publish_items(s, catalog_records(src.catalog))  # the catalogue first: item records (items topic)
        res = replay(s, events, rate=rate, progress=not args.quiet, total=total)
    print_json({"source": src.label, "items": n_items, "events": res.events, "seconds": round(res.seconds, 3), "events_per_s": round(res.events_per_s, 1)})
    return 0


def _rate(raw: str, flag: str, *, max_ok: bool = False) -> float:
    try:
        v = float(raw)
    except ValueError:
        v = math.nan
    if not (math.isfinite(v) and v > 0):
        alternative = " or 'max'" if max_ok else ""
        raise RecoError(f"{flag} must be a positive number of events per second{alternative}, got {raw!r}")
    return v


def _listening(bootstrap: str, timeout: float = 0.3) -> bool:
    import socket

    host, _, port = bootstrap.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _load_target(settings: Settings, embedded: bool) -> Iterator[tuple[Settings, str]]:
    """RECO_KAFKA_BOOTSTRAP, else a ``reco broker`` on 127.0.0.1:9092, else a broker of our own."""
    if settings.kafka_bootstrap:
        with embedded_or_configured(settings) as s:
            yield s, f"Kafka at {s.kafka_bootstrap} (RECO_KAFKA_BOOTSTRAP)"
        return
    if not embedded and _listening(DEFAULT_LOCAL_BOOTSTRAP):
        with embedded_or_configured(client_settings(settings)) as s:
            yield s, f"the broker on {DEFAULT_LOCAL_BOOTSTRAP} (reco broker)"
        return
    with embedded_or_configured(settings) as s:
        yield s, f"an embedded broker started for this run on {s.kafka_bootstrap} (memory-only: the events go when it stops)"


def _cmd_load(args: argparse.Namespace, settings: Settings) -> int:
    """``reco load``: the demo generator as a load tool, at a steady rate, for a fixed time."""
    import threading

    from streamproc.replay import replay

    rate = _rate(str(args.rate), "--rate")
    if not args.duration > 0:
        raise RecoError(f"--duration must be > 0 seconds, got {args.duration}")
    n = max(1, round(rate * args.duration))
    src = event_source(args, n=n, rate=rate)
    counts: dict[str, int] = {}

    def counted(events: Iterable[tuple[float, str, bytes]]) -> Iterator[tuple[float, str, bytes]]:
        for t, user, value in events:
            kind = _type_of(value)
            counts[kind] = counts.get(kind, 0) + 1
            yield t, user, value

    stop = threading.Event()
    prev = {sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with _load_target(settings, args.embedded) as (s, where):
            print(f"reco load: {src.label} -> {Topics.from_settings(s).events} on {where}", file=sys.stderr, flush=True)
            events = counted(src.events if src.generated else list(src.events)[:n])
            res = replay(s, events, rate=rate, progress=not args.quiet and "events", stop=stop, total=min(n, src.total or n))
    finally:
        for sig, h in prev.items():
            signal.signal(sig, h)
    sent_by_type = {k: counts.get(k, 0) for k in ("click", "rating", "comment") if counts.get(k)}
    out = {"sent": res.events, "by_type": sent_by_type, "seconds": round(res.seconds, 2),
           "events_per_s": round(res.events_per_s, 1), "asked_events_per_s": rate,
           "achieved_ratio": round(res.events_per_s / rate, 3), "topic": Topics.from_settings(s).events,
           "bootstrap": s.kafka_bootstrap, "interrupted": stop.is_set()}
    if args.json:
        print_json(out)
    else:
        print(f"sent {res.events:,} events ({', '.join(f'{v:,} {k}s' for k, v in sent_by_type.items())}) in {res.seconds:.1f} s: "
              f"{res.events_per_s:,.0f} events/s of {rate:,.0f} asked ({100 * res.events_per_s / rate:.1f} %)"
              f"{' (interrupted)' if stop.is_set() else ''}; topic {out['topic']} on {s.kafka_bootstrap}")
    return 0 if not stop.is_set() else 130


def _type_of(value: bytes) -> str:
    # every source here serializes compactly, "type" before any free text: no JSON parse per event
    i = value.find(b'"type":"')
    return value[i + 8 : value.index(b'"', i + 8)].decode() if i >= 0 else "?"


def _cmd_bench_publish(args: argparse.Namespace, settings: Settings) -> int:
    from streamproc.replay import bench_events, load_events, replay

    events = (load_events(args.dataset, comments=False) if args.dataset else bench_events(comments=False)[0])[: args.limit]
    with embedded_or_configured(settings) as s:
        res = replay(s, events, progress=False)
        from streamproc.kafka import read_all
        from streamproc.topics import Topics

        on_broker = len(read_all(s, Topics.from_settings(s).events))
    out = {"events": res.events, "events_on_broker": on_broker, "seconds": round(res.seconds, 3),
           "events_per_s": round(res.events_per_s, 1), "target_events_per_s": 20000, "client": "aiokafka"}
    print_json(out) if args.json else print(f"{res.events} events in {res.seconds:.2f} s = {res.events_per_s:,.0f} events/s")
    return 0


def _cmd_streamproc(args: argparse.Namespace, settings: Settings) -> int:
    """``reco streamproc``: one stream worker until SIGTERM/SIGINT, then finish, commit, exit 0."""
    import threading

    from prometheus_client import start_http_server

    from streamproc.worker import StreamWorker

    s = client_settings(settings)
    port = settings.metrics_port or 9101
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        log.info("signal %s: finishing in-flight work", signum)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    worker = StreamWorker(s)
    if not args.no_metrics:
        try:
            start_http_server(port, addr=settings.metrics_host)
        except OSError as exc:
            raise RecoError(f"RECO_METRICS_PORT={port}: cannot serve /metrics on {settings.metrics_host}:{port} ({exc})") from exc
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, port)
    worker.run(stop)
    return 0


def _bench_texts(n: int) -> list[str]:
    from streamproc.replay import bench_texts

    return bench_texts(n)[0]


def _bench_texts_source() -> str:
    from streamproc.replay import bench_texts

    return bench_texts(1)[1]


def _cmd_bench_encoder(args: argparse.Namespace, settings: Settings) -> int:
    from streamproc.bench import encoder_bench

    out = encoder_bench(settings, reviews=args.reviews, n=args.n, tags=args.tags, rounds=args.rounds, single=args.single)
    if args.json:
        print_json(out)
    else:
        print(f"{out['comments_per_s']:.0f} reviews/s through the worker's encoder ({out['backend']}), plain fp32 model "
              f"{out['raw_fp32_comments_per_s']:.0f}/s; cosine to fp32 {out['mean_cosine_vs_fp32']}, sentiment AUC "
              f"{out['sentiment_auc']} (fp32 {out['sentiment_auc_fp32']}); short tags {out['tags_comments_per_s']:.0f}/s; "
              f"peak RSS {out['peak_rss_mb']:.0f} MB")
    return 0


def _bench_events(n: int, comments: int, invalid: int, *, duplicates: int = 0) -> tuple[list[tuple[float, str, bytes]], set[str]]:
    """Synthetic rating/click events (+ comments from real tags, + invalid messages), and the
    event_ids a worker must account for."""
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    total = n + comments + invalid
    t0 = time.time() - total - 3600  # one event per second, all in the past
    texts = _bench_texts(comments) if comments else []
    events: list[tuple[float, str, bytes]] = []
    ids: set[str] = set()
    every_comment = total // comments if comments else 0
    every_invalid = total // invalid if invalid else 0
    c = v = 0
    for i in range(total):
        u = f"u{i % 5000}"
        eid = f"b{i}"
        if every_invalid and i % every_invalid == every_invalid - 1 and v < invalid:
            v += 1
            bad = [b"{not json", dumps({"schema_version": 1, "type": "rating", "event_id": eid, "user_id": u, "item_id": "m1",
                                         "event_time": t0 + i, "rating": 99}).encode(),
                   dumps({"schema_version": 1, "type": "like", "event_id": eid, "user_id": u, "item_id": "m1", "event_time": t0 + i}).encode()]
            events.append((t0 + i, u, bad[v % 3]))
            ids.add(eid)
            continue
        if every_comment and i % every_comment == 0 and c < comments:
            ev: dict[str, Any] = {"schema_version": 1, "type": "comment", "event_id": eid, "user_id": u, "item_id": f"m{i % 9000}",
                                  "event_time": t0 + i, "text": texts[c]}
            c += 1
        elif i % 2:
            ev = {"schema_version": 1, "type": "rating", "event_id": eid, "user_id": u, "item_id": f"m{i % 9000}",
                  "event_time": t0 + i, "rating": float(1 + i % 9) / 2}
        else:
            ev = {"schema_version": 1, "type": "click", "event_id": eid, "user_id": u, "item_id": f"m{i % 9000}", "event_time": t0 + i}
        events.append((t0 + i, u, dumps(ev).encode()))
        ids.add(eid)
    return events, ids


def _publish_slowly(settings: Settings, n: int, rate: float) -> dict[str, str]:
    """Publish ``n`` events at ``rate``/s (every 10th a comment), each sent on its own; event_id -> kind."""
    from streamproc.publisher import EventPublisher

    texts = _bench_texts(n // 10 + 1)
    out: dict[str, str] = {}
    with EventPublisher(settings, linger_ms=0) as pub:
        t0 = time.perf_counter()
        for i in range(n):
            ahead = i / rate - (time.perf_counter() - t0)
            if ahead > 0:
                time.sleep(ahead)
            eid = f"low{i}"
            if i % 10 == 9:
                pub.comment(user_id=f"lu{i}", item_id="m1", text=texts[i // 10], event_id=eid)
                out[eid] = "comment"
            else:
                pub.rating(user_id=f"lu{i}", item_id="m1", rating=4.0, event_id=eid)
                out[eid] = "rating"
            pub.flush()
    return out


def _raw_consume_rate(settings: Settings, topic: str, n: int) -> float:
    """Anchor: a plain aiokafka consumer (no group, no parsing) reading the same topic."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streamproc.kafka import client_config

    async def go() -> float:
        c = AIOKafkaConsumer(enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=20,
                             max_partition_fetch_bytes=4 * 1024 * 1024, **client_config(settings, aio=True))
        await c.start()
        try:
            parts = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
            c.assign(parts)
            await c.seek_to_beginning(*parts)
            got, t0, t1 = 0, None, time.perf_counter()
            deadline = time.monotonic() + 120
            while got < n and time.monotonic() < deadline:
                for recs in (await c.getmany(timeout_ms=500, max_records=4000)).values():
                    if t0 is None:
                        t0 = time.perf_counter()
                    got += len(recs)
                    t1 = time.perf_counter()
            return got / (t1 - t0) if t0 is not None and t1 > t0 else 0.0
        finally:
            await c.stop()

    return asyncio.run(go())


def _cmd_bench_ingest(args: argparse.Namespace, settings: Settings) -> int:
    import numpy as np

    from streamproc.bench import WorkerRun, codec_rounds, publish_compressed
    from streamproc.examples import ExampleBatch
    from streamproc.kafka import read_all
    from streamproc.topics import Topics

    events, ids = _bench_events(args.n, args.comments, args.invalid)
    settings = Settings(**{**settings.__dict__, "topic_prefix": f"{settings.topic_prefix}bench{int(time.time())}."})
    with embedded_or_configured(settings) as s:
        # Published as an app would, in --compression batches (default none).
        publish_rate = publish_compressed(s, events, args.compression)
        log.info("published %d events (%s) at %.0f/s", len(events), args.compression, publish_rate)
        run = WorkerRun(s)
        deadline = time.monotonic() + args.timeout
        run.wait(len(events), deadline)
        elapsed = run.seconds
        # Low load: the same worker, events published one by one at a steady rate.
        latency_ids = _publish_slowly(s, args.latency_events, args.latency_rate) if args.latency_events and run.thread.is_alive() else {}
        run.wait(len(events) + len(latency_ids), deadline)
        run.stop()
        topics = Topics.from_settings(s)
        got: list[str] = []
        lat: dict[str, list[float]] = {"rating": [], "comment": []}
        for m in read_all(s, topics.examples):
            b = ExampleBatch.decode(m.value)
            got.extend(b.event_ids)
            for eid, rec in zip(b.event_ids, b.records, strict=False):
                kind = latency_ids.get(eid)
                if kind:
                    lat[kind].append(float(rec["processed"] - rec["published"]))
        got_bench = [e for e in got if e not in latency_ids]
        dead = read_all(s, topics.dead_letters)
        dead_ids: set[str] = set()
        reasons: dict[str, int] = {}
        for m in dead:
            h = {k: v.decode() for k, v in m.headers}
            reasons[h["reason"]] = reasons.get(h["reason"], 0) + 1
            try:
                dead_ids.add(json.loads(m.value)["event_id"])
            except (ValueError, KeyError, TypeError):
                pass
        # non-JSON dead letters carry no event_id: account for them by count
        accounted = set(got) | dead_ids
        unparsable = len(dead) - len(dead_ids)
        lost = max(0, len(ids - accounted) - unparsable) + len(set(latency_ids) - set(got))
        raw_consume = _raw_consume_rate(s, topics.events, len(events) + len(latency_ids))
        # One pass per codec on the same machine state: rating/click events only (the encoder would
        # dominate comments), a fresh worker and fresh topics each.
        codec_events = _bench_events(args.codec_n, 0, 0)[0] if args.codec_n else []
        codecs = [c for c in args.codecs.split(",") if c]
        by_codec = codec_rounds(s, codec_events, codecs, rounds=args.rounds, timeout=args.timeout) if codec_events and codecs else {}
    base = (by_codec.get("none") or {}).get("events_per_s")
    for r in by_codec.values():
        r["ratio_to_none"] = round(r["events_per_s"] / base, 3) if base and r["events_per_s"] else None
    out = {
        "events": len(events), "rating_click_events": args.n, "comments": args.comments, "invalid": len(dead),
        "invalid_by_reason": reasons, "examples": len(got_bench), "duplicates_in_examples": len(got) - len(set(got)),
        "lost": lost, "seconds": round(elapsed, 3), "events_per_s": round(len(events) / elapsed, 1) if elapsed > 0 else None,
        "compression": args.compression, "examples_compression": s.compression,
        "publish_events_per_s": round(publish_rate, 1),
        "raw_consume_events_per_s": round(raw_consume, 1),
        "low_load": {
            "rate_per_s": args.latency_rate,
            **{f"{k}_latency_ms_{q}": round(1000 * float(np.quantile(v, p)), 1)
               for k, v in lat.items() if v for q, p in (("p50", 0.5), ("p99", 0.99))},
            "note": "Kafka record timestamp of the event -> example emitted (examples.processed - published)",
        },
        "target_events_per_s": 20000, "client": "aiokafka (consumer group + producer)",
        "by_compression": {"events": len(codec_events), "rounds": args.rounds,
                           "note": "events published in that codec's batches; median of the rounds (order rotated); "
                           "ratio_to_none target >= 0.8 for lz4/zstd", **by_codec},
    }
    if args.json:
        print_json(out)
    else:
        print(f"{out['events_per_s']} events/s ({args.compression}), {lost} lost, {len(dead)} dead letters")
        for c, r in by_codec.items():
            print(f"  {c}: {r['events_per_s']} events/s ({r['ratio_to_none']} of none)")
    return 0


def _stop_on_signals() -> dict[str, bool]:
    state = {"now": False}

    def handler(signum: int, frame: Any) -> None:
        state["now"] = True

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return state


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    p = commands.add_parser("broker", help="run the embedded Kafka-compatible broker (Tansu) on loopback")
    p.add_argument("--port", type=int, default=0, help="TCP port (default RECO_EMBEDDED_PORT or 9092)")
    p.add_argument("--create-topics", action="store_true", help="also create the service's topics")
    p.add_argument("-v", "--verbose", action="store_true", help="show the broker's own log")
    p.set_defaults(func=_cmd_broker)

    p = commands.add_parser("topics", help="topic administration")
    tp = p.add_subparsers(dest="topics_cmd", required=True)
    tc = tp.add_parser("create", help="create the service's topics (idempotent) and report what exists")
    tc.set_defaults(func=_cmd_topics)

    p = commands.add_parser("publish", help="validate and publish one event, or one item record (reco publish item ...)")
    p.add_argument("type", choices=["click", "rating", "comment", "item"])
    p.add_argument("--user", help="user_id (events)")
    p.add_argument("--item", help="item_id")
    p.add_argument("--title", help="item: title")
    p.add_argument("--category", action="append", help="item: a category (repeat, or comma-separated)")
    p.add_argument("--description", help="item: description text (encoded into its content vector)")
    p.add_argument("--unavailable", action="store_true", help="item: hide it from every recommendation")
    p.add_argument("--remove", action="store_true", help="item: remove it from the catalogue (a tombstone)")
    p.add_argument("--updated-at", type=float, help="item: Unix seconds (default: now)")
    p.add_argument("--rating", type=float, help="rating value (rating events; optional for comments)")
    p.add_argument("--text", help="comment text")
    p.add_argument("--event-id", help="event_id (default: a new UUID)")
    p.add_argument("--event-time", type=float, help="Unix seconds (default: now)")
    p.set_defaults(func=_cmd_publish)

    p = commands.add_parser("replay", help="publish events (built-in demo data, or a dataset) in event-time order")
    p.add_argument("dataset_dir", nargs="?", metavar="DIR", help="MovieLens-style directory (same as --dataset)")
    add_source_args(p)
    p.add_argument("--speed", default="max", help="events per second, or 'max' (default)")
    p.add_argument("--limit", type=int, default=None, help="publish only the first N events (demo data: default 100,000)")
    p.add_argument("--embedded", action="store_true", help="start an embedded broker for the replay (when RECO_KAFKA_BOOTSTRAP is unset)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_replay)

    p = commands.add_parser("load", help="publish generated demo events at a steady rate for a fixed time (a load tool)")
    p.add_argument("--rate", default="1000", help="events per second (default 1000)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds (default 30)")
    add_source_args(p)
    p.add_argument("--embedded", action="store_true",
                   help="always start an embedded broker (default: RECO_KAFKA_BOOTSTRAP, else a broker on 127.0.0.1:9092, else an embedded one)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_load)

    p = commands.add_parser("streamproc", help="run a stream worker (events -> training examples) until SIGTERM/SIGINT")
    p.add_argument("--no-metrics", action="store_true", help="do not serve /metrics")
    p.set_defaults(func=_cmd_streamproc)

    p = bench.add_parser("encoder", help="comment encoder on real reviews: the worker's path vs the plain fp32 model (speed, cosine, sentiment AUC)")
    p.add_argument("--reviews", metavar="JSONL", help="reviews file (user_id, item_id, rating, time, text per line); "
                   "default: ../shared/datasets/yelp-sample/reviews.jsonl beside the clone, else built-in demo comments")
    p.add_argument("--n", type=int, default=None, help="use only the first N reviews (default: all)")
    p.add_argument("--tags", type=int, default=2000, help="short texts for the short-comment figure (ml-latest-small tags, else demo comments)")
    p.add_argument("--single", type=int, default=50, help="reviews encoded one at a time for the low-load number")
    p.add_argument("--rounds", type=int, default=6, help="interleaved rounds of the plain model vs the worker's path")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_bench_encoder)

    p = bench.add_parser("ingest", help="stream worker throughput on the embedded broker (publish, then consume)")
    p.add_argument("--n", type=int, default=200_000, help="rating/click events")
    p.add_argument("--comments", type=int, default=200, help="comment events (real tags) mixed in")
    p.add_argument("--invalid", type=int, default=1000, help="invalid messages mixed in")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--latency-events", type=int, default=200, help="events published one by one afterwards (low-load latency)")
    p.add_argument("--latency-rate", type=float, default=50.0, help="their rate, events/s")
    p.add_argument("--compression", default="none", choices=("none", "gzip", "snappy", "lz4", "zstd"),
                   help="codec of the batches the events are published in (as an app's producer would)")
    p.add_argument("--codecs", default="none,gzip,snappy,lz4,zstd", help="codecs of the per-codec passes (comma-separated)")
    p.add_argument("--codec-n", type=int, default=50_000, help="rating/click events per codec pass (0 = no passes)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of codec passes (median reported)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_bench_ingest)

    p = bench.add_parser("publish", help="replay ratings to the embedded broker (ml-latest-small beside the clone, else demo data)")
    p.add_argument("--dataset", help="dataset directory")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_bench_publish)


# ---------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reco", description="Streaming online-learning recommendation service")
    parser.add_argument("--config", help="TOML settings file (else RECO_CONFIG)")
    parser.add_argument("--log-level", default="INFO")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bench_parser = commands.add_parser("bench", help="benchmarks that print JSON")
    bench = bench_parser.add_subparsers(dest="bench", required=True, metavar="BENCH")
    seen = set()
    for ep in sorted(entry_points(group="reco.commands"), key=lambda e: e.name):
        if ep.value in seen:
            continue
        seen.add(ep.value)
        ep.load()(commands, bench)
    return parser


def _closed_socket_race(record: logging.LogRecord) -> bool:
    """Drop kafka-python 3.0's traceback for a read on a socket it closed itself during shutdown
    (``'NoneType' object has no attribute 'recv'`` in ``_sock_recv``): a library race, harmless,
    and a traceback in an operator's log reads like a crash. Every other record passes."""
    exc = record.exc_info[1] if record.exc_info else None
    return not (isinstance(exc, AttributeError) and "'recv'" in str(exc))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("kafka", "aiokafka", "faust", "mode", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("kafka.net.transport").addFilter(_closed_socket_race)
    try:
        settings = Settings.load(file=args.config)
        return int(args.func(args, settings) or 0)
    except RecoError as exc:
        print(f"reco: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
