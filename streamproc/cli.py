"""``reco``: the command line. Each package contributes commands through the ``reco.commands``
entry point group (``register(commands, bench)``), so imports keep running one way
(streamproc ← trainer ← serving) while one program serves every role.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import time
from importlib.metadata import entry_points
from typing import Any, Iterator

from streamproc.errors import RecoError
from streamproc.settings import Settings

__all__ = ["main", "embedded_or_configured", "print_json", "DEFAULT_LOCAL_BOOTSTRAP", "client_settings"]

log = logging.getLogger("reco")
DEFAULT_LOCAL_BOOTSTRAP = "127.0.0.1:9092"


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False, default=str))


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
    from streamproc.kafka import client_config, create_topics

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


def _cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from streamproc.replay import DEFAULT_DATASET, load_events, replay

    events = load_events(args.dataset or DEFAULT_DATASET)[: args.limit]
    rate = None if args.speed == "max" else float(args.speed)
    with (embedded_or_configured(settings) if args.embedded else contextlib.nullcontext(client_settings(settings))) as s:
        res = replay(s, events, rate=rate, progress=not args.quiet)
    print_json({"events": res.events, "seconds": round(res.seconds, 3), "events_per_s": round(res.events_per_s, 1)})
    return 0


def _cmd_bench_publish(args: argparse.Namespace, settings: Settings) -> int:
    from streamproc.replay import DEFAULT_DATASET, load_events, replay

    events = load_events(args.dataset or DEFAULT_DATASET, comments=False)[: args.limit]
    with embedded_or_configured(settings) as s:
        res = replay(s, events, progress=False)
        from streamproc.kafka import read_all
        from streamproc.topics import Topics

        on_broker = len(read_all(s, Topics.from_settings(s).events))
    out = {"events": res.events, "events_on_broker": on_broker, "seconds": round(res.seconds, 3),
           "events_per_s": round(res.events_per_s, 1), "target_events_per_s": 20000, "client": "aiokafka"}
    print_json(out) if args.json else print(f"{res.events} events in {res.seconds:.2f} s = {res.events_per_s:,.0f} events/s")
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

    p = commands.add_parser("publish", help="validate and publish one event")
    p.add_argument("type", choices=["click", "rating", "comment"])
    p.add_argument("--user", required=True, help="user_id")
    p.add_argument("--item", required=True, help="item_id")
    p.add_argument("--rating", type=float, help="rating value (rating events; optional for comments)")
    p.add_argument("--text", help="comment text")
    p.add_argument("--event-id", help="event_id (default: a new UUID)")
    p.add_argument("--event-time", type=float, help="Unix seconds (default: now)")
    p.set_defaults(func=_cmd_publish)

    p = commands.add_parser("replay", help="publish a MovieLens-style dataset as events, in event-time order")
    p.add_argument("dataset", nargs="?", help="dataset directory (default ../shared/datasets/ml-latest-small)")
    p.add_argument("--speed", default="max", help="events per second, or 'max' (default)")
    p.add_argument("--limit", type=int, default=None, help="publish only the first N events")
    p.add_argument("--embedded", action="store_true", help="start an embedded broker for the replay (when RECO_KAFKA_BOOTSTRAP is unset)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_replay)

    p = bench.add_parser("publish", help="replay ml-latest-small ratings to the embedded broker")
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("kafka", "aiokafka", "faust", "mode"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
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
