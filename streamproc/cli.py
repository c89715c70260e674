"""``reco``: the command line. Each package contributes commands through the ``reco.commands``
entry point group (``register(commands, bench)``), so imports keep running one way
(streamproc ← trainer ← serving) while one program serves every role.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import sys
from collections.abc import Iterable, Iterator
from importlib.metadata import entry_points
from typing import Any

from streamproc.errors import RecoError
from streamproc.runtime import (
    DEFAULT_LOCAL_BOOTSTRAP,
    client_settings,
    embedded_or_configured,
    metrics_port,
    print_json,
    signals_stop,
    stop_on_signals,
)
from streamproc.settings import Settings, program_settings
from streamproc.sources import add_source_args, event_source
from streamproc.topics import Topics

__all__ = ["main", "build_parser", "register"]

log = logging.getLogger("reco")


# ---------------------------------------------------------------------------------- commands
def _cmd_broker(args: argparse.Namespace, settings: Settings) -> int:
    from streamproc.broker import EmbeddedBroker

    if settings.kafka_bootstrap:
        print(f"RECO_KAFKA_BOOTSTRAP={settings.kafka_bootstrap} is set: not starting an embedded broker", file=sys.stderr)
        return 2
    broker = EmbeddedBroker(args.port or settings.embedded_port or 9092, quiet=not args.verbose)
    stop = stop_on_signals()
    with broker:
        if args.create_topics:
            from streamproc.kafka import create_topics

            create_topics(dataclasses.replace(settings, kafka_bootstrap=broker.bootstrap))
        print(f"embedded broker listening on {broker.bootstrap} (memory-only; Ctrl-C to stop)", flush=True)
        while not stop.wait(0.2) and broker.running:
            pass
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

    with signals_stop() as stop, _load_target(settings, args.embedded) as (s, where):
        print(f"reco load: {src.label} -> {Topics.from_settings(s).events} on {where}", file=sys.stderr, flush=True)
        events = counted(src.events if src.generated else list(src.events)[:n])
        res = replay(s, events, rate=rate, progress=not args.quiet and "events", stop=stop, total=min(n, src.total or n))
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


def _cmd_streamproc(args: argparse.Namespace, settings: Settings) -> int:
    """``reco streamproc``: one stream worker until SIGTERM/SIGINT, then finish, commit, exit 0."""

    from prometheus_client import start_http_server

    from streamproc.worker import StreamWorker

    s = client_settings(settings)
    port = metrics_port(settings, "streamproc")
    stop = stop_on_signals("finishing in-flight work")
    worker = StreamWorker(s)
    if not args.no_metrics:
        try:
            start_http_server(port, addr=settings.metrics_host)
        except OSError as exc:
            raise RecoError(f"RECO_METRICS_PORT={port}: cannot serve /metrics on {settings.metrics_host}:{port} ({exc})") from exc
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, port)
    worker.run(stop)
    return 0


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
        settings = program_settings().load(file=args.config)
        return int(args.func(args, settings) or 0)
    except RecoError as exc:
        print(f"reco: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
