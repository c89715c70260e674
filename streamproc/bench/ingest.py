"""``reco bench ingest`` and ``reco bench publish``: the stream worker's and the publisher's
throughput on the embedded broker.

``reco bench ingest --compression CODEC`` publishes the benchmark's events in ``CODEC``-compressed
batches (what a Java, librdkafka or kafka-python app with ``compression.type`` sends) and reports
the stream worker's events/s on them, plus one pass per codec (none, gzip, snappy, lz4, zstd) in
the same run so the numbers share a machine state; the anchor is a plain aiokafka consumer reading
the same topic.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import threading
import time
from typing import Any

from streamproc.events import event_dict
from streamproc.runtime import embedded_or_configured, print_json, quantile, wait_until
from streamproc.settings import Settings

__all__ = ["CODECS", "publish_compressed", "WorkerRun", "codec_pass", "codec_rounds", "register_bench"]

log = logging.getLogger("reco")

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")


def publish_compressed(settings: Settings, events: list[tuple[float, str, bytes]], codec: str) -> float:
    """Publish ``events`` to the events topic, keyed by user, in ``codec`` batches; returns events/s.

    One aiokafka producer as :func:`streamproc.replay.replay` uses (linger 5 ms, 512 KB batches,
    acks=1), so only the codec differs between passes.
    """
    if codec not in CODECS:
        raise ValueError(f"codec: {codec!r} is not one of {', '.join(CODECS)}")
    from aiokafka import AIOKafkaProducer

    from streamproc.kafka import client_config
    from streamproc.topics import Topics

    topic = Topics.from_settings(settings).events

    async def go() -> float:
        producer = AIOKafkaProducer(linger_ms=5, max_batch_size=512 * 1024, acks=1,
                                    compression_type=None if codec == "none" else codec, **client_config(settings, aio=True))
        await producer.start()
        try:
            t0 = time.perf_counter()
            pending = []
            for _, user, value in events:
                pending.append(await producer.send(topic, value=value, key=user.encode()))
                if len(pending) >= 5000:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)
            return len(events) / (time.perf_counter() - t0)
        finally:
            await producer.stop()

    return asyncio.run(go())


class WorkerRun:
    """A :class:`~streamproc.worker.StreamWorker` running in a thread, with its progress."""

    def __init__(self, settings: Settings, **kw: Any) -> None:
        from prometheus_client import CollectorRegistry

        from streamproc.worker import StreamWorker

        self.registry = CollectorRegistry()
        self.worker = StreamWorker(settings, registry=self.registry, **kw)  # loads the encoder before the clock starts
        self.stop_event = threading.Event()
        self.failure: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, name="stream-worker")
        self.thread.start()

    def _run(self) -> None:
        try:
            self.worker.run(self.stop_event)
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.failure.append(exc)

    @property
    def accounted(self) -> int:
        return self.worker.examples_acked + self.worker.dead_letters_acked

    def wait(self, target: int, deadline: float) -> None:
        """Until ``target`` events are acknowledged as examples or dead letters (or the deadline)."""
        wait_until(lambda: self.accounted >= target or not self.thread.is_alive(), deadline - time.monotonic(), interval=0.02)

    @property
    def seconds(self) -> float:
        """First event consumed → last acknowledgement."""
        return (self.worker.last_acked_at or 0) - (self.worker.first_consumed_at or 0)

    def stop(self) -> None:
        from streamproc.errors import RecoError

        self.stop_event.set()
        self.thread.join()
        if self.failure:
            raise RecoError(f"stream worker failed: {self.failure[0]}")


def codec_pass(settings: Settings, events: list[tuple[float, str, bytes]], codec: str, *, timeout: float,
               tag: str = "", **worker_kw: Any) -> dict[str, Any]:
    """Publish ``events`` in ``codec`` batches to fresh topics, then time a fresh worker through them
    (``worker_kw`` go to the :class:`~streamproc.worker.StreamWorker`; ``tag`` tells passes apart)."""
    from streamproc.kafka import create_topics

    s = dataclasses.replace(settings, topic_prefix=f"{settings.topic_prefix}{codec}{tag}.")
    create_topics(s)
    publish_rate = publish_compressed(s, events, codec)
    run = WorkerRun(s, **worker_kw)
    try:
        run.wait(len(events), time.monotonic() + timeout)
    finally:
        run.stop()
    seconds = run.seconds
    return {
        "events_per_s": round(len(events) / seconds, 1) if seconds > 0 else None,
        "accounted": run.accounted,
        "examples": run.worker.examples_acked,
        "publish_events_per_s": round(publish_rate, 1),
        "undecodable_batches": sum(v for k, v in _samples(run.registry, "reco_streamproc_undecodable_batches_total")),
    }


def _samples(registry: Any, name: str) -> list[tuple[str, float]]:
    return [(str(s.labels), s.value) for m in registry.collect() for s in m.samples if s.name == name]


def codec_rounds(settings: Settings, events: list[tuple[float, str, bytes]], codecs: list[str], *, rounds: int,
                 timeout: float) -> dict[str, dict[str, Any]]:
    """:func:`codec_pass` for every codec, ``rounds`` times, the order rotated each round (load from
    other processes then hits every codec alike); per codec the median events/s and every run."""
    import statistics

    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in codecs}
    for r in range(rounds):
        for c in codecs[r % len(codecs):] + codecs[: r % len(codecs)]:
            runs[c].append(codec_pass(settings, events, c, timeout=timeout, tag=f"r{r}"))
    out: dict[str, dict[str, Any]] = {}
    for c, rs in runs.items():
        rates = [x["events_per_s"] or 0.0 for x in rs]
        out[c] = {"events_per_s": round(statistics.median(rates), 1), "runs_events_per_s": rates,
                  "publish_events_per_s": round(statistics.median(x["publish_events_per_s"] for x in rs), 1),
                  "accounted_min": min(x["accounted"] for x in rs),
                  "undecodable_batches": sum(x["undecodable_batches"] for x in rs)}
    return out


# ---------------------------------------------------------------------- the commands
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


def _bench_texts(n: int) -> list[str]:
    from streamproc.replay import bench_texts

    return bench_texts(n)[0]


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
            bad = [b"{not json", dumps(event_dict("rating", u, "m1", event_id=eid, event_time=t0 + i, rating=99)).encode(),
                   dumps(event_dict("like", u, "m1", event_id=eid, event_time=t0 + i)).encode()]
            events.append((t0 + i, u, bad[v % 3]))
            ids.add(eid)
            continue
        if every_comment and i % every_comment == 0 and c < comments:
            ev = event_dict("comment", u, f"m{i % 9000}", event_id=eid, event_time=t0 + i, text=texts[c])
            c += 1
        elif i % 2:
            ev = event_dict("rating", u, f"m{i % 9000}", event_id=eid, event_time=t0 + i, rating=float(1 + i % 9) / 2)
        else:
            ev = event_dict("click", u, f"m{i % 9000}", event_id=eid, event_time=t0 + i)
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
    from streamproc.examples import ExampleBatch
    from streamproc.kafka import read_all
    from streamproc.topics import Topics

    events, ids = _bench_events(args.n, args.comments, args.invalid)
    settings = dataclasses.replace(settings, topic_prefix=f"{settings.topic_prefix}bench{int(time.time())}.")
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
            **{f"{k}_latency_ms_{q}": quantile(v, p, scale=1000, digits=1)
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


def register_bench(bench: argparse._SubParsersAction) -> None:
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
