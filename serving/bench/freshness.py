"""``reco bench freshness``: event published → visible in recommendations, with the whole loop up.

A background replay of ml-latest-small keeps ≥ 1,000 events/s flowing. Each probe is a brand-new
user who rates (or comments on) an item; the user is unknown to the model until their feedback has
gone through streamproc → trainer → model update → serving swap. We measure, from the moment the
probe event is handed to the producer:

- ``visible``: the user's HTTP recommendations stop being the cold-start fallback
  (``GET /v1/users/{user}/recommendations`` polled every 5 ms);
- ``pushed``: the refreshed top-k for that user arrives on the recommendations topic (serving
  publishes it right after swapping in the model version that covers the feedback).
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import operator
import statistics
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

from serving.ops.scrape import metric_sum, samples, scrape
from serving.settings import ServingSettings
from streamproc.events import event_dict
from streamproc.runtime import METRICS_PORTS, print_result, quantile, wait_until

__all__ = ["register_bench", "run_freshness"]


def _q(xs: list[float], q: float) -> float | None:
    return quantile(xs, q, nearest=True, digits=4)  # a probe's measured latency, not an interpolation


def _clock(t: float) -> str:
    """Wall-clock time of day with milliseconds (to line a probe up with the roles' logs)."""
    return time.strftime("%H:%M:%S", time.localtime(t)) + f"{t % 1:.3f}"[1:]


def _probe_event(kind: str, user: str, item: str, n: int) -> dict[str, Any]:
    texts = ["a wonderful, moving film", "boring and far too long", "great soundtrack", "dark but clever"]
    fields = {"rating": 5.0} if kind == "rating" else {"text": texts[n % 4]}
    return event_dict(kind, user, item, event_id=f"probe-{uuid.uuid4().hex}", **fields)


def _personalized(client: Any, user: str) -> bool:
    """The user's recommendations are no longer the cold-start fallback."""
    return not client.get(f"/v1/users/{user}/recommendations", params={"k": 10}).json().get("fallback", True)


def _catch_up(s: ServingSettings, rate: float, timeout_s: float) -> tuple[float | None, float | None]:
    """Wait until the trainer has learned all but about one second (``rate`` events) of what the
    stream workers consumed, and serving runs a model version at most 10 behind the trainer's (2 s
    of deltas at the default ``RECO_UPDATE_INTERVAL_MS``): the backlog a loop builds while it
    starts (a trainer restored from a large checkpoint publishes a snapshot, and serving loads it
    and then every delta published meanwhile, while events already arrive) is not the steady
    state the probes measure. Returns (seconds waited, or None when it
    never caught up within ``timeout_s``; the events still behind then)."""
    urls = {role: f"http://{s.metrics_host}:{port}/metrics" for role, port in METRICS_PORTS.items()}
    urls["serving"] = f"http://{s.http_host}:{s.http_port}/metrics"
    last: list[float | None] = [None]

    def caught_up() -> bool:
        consumed = metric_sum(scrape(urls["streamproc"]), "reco_streamproc_events_consumed_total")
        trainer = scrape(urls["trainer"])
        learned = metric_sum(trainer, "reco_trainer_examples_learned_total")
        published = metric_sum(trainer, "reco_trainer_model_version")
        served = metric_sum(scrape(urls["serving"]), "reco_serving_model_version")
        last[0] = None if consumed is None or learned is None else consumed - learned
        return (last[0] is not None and last[0] <= rate and published is not None and served is not None
                and served >= published - 10)

    t0 = time.perf_counter()
    done = wait_until(caught_up, timeout_s, interval=1.0)
    return (round(time.perf_counter() - t0, 1) if done else None), last[0]


def run_freshness(settings: ServingSettings, *, probes: int = 30, comment_probes: int = 10, background_rate: float = 1500,
                  warmup_s: float = 20, log: Any = None, background: Iterable[tuple[float, str, bytes]] | None = None,
                  probe_item: str = "356", ready_timeout_s: float = 180, stop_after_misses: int | None = None,
                  catch_up_timeout_s: float = 0) -> dict[str, Any]:
    """Run the loop (``running_loop``) under ``background`` (default: :func:`bench_events`) at
    ``background_rate`` and measure each probe; ``probe_item`` is an item the model knows. With a
    configured broker and ``checkpoint_dir`` the trainer starts from that checkpoint (``reco bench
    scale`` measures a 1M-user model this way). ``stop_after_misses``: stop probing after that many
    probes in a row were not visible within 15 s (the loop is not keeping up); ``probes_not_run``
    counts the rest."""
    import httpx
    from kafka import KafkaConsumer, KafkaProducer

    from serving.ops.loop import running_loop, wait_http
    from streamproc.kafka import client_config
    from streamproc.replay import bench_events, replay
    from streamproc.topics import Topics

    log = log or io.StringIO()
    if background is None:
        background = bench_events()[0]  # ml-latest-small beside the clone (CI), else the demo data
    with running_loop(settings, log=log) as (s, sup):
        base = f"http://{s.http_host}:{s.http_port}"
        if not wait_http(f"{base}/healthz", ready_timeout_s):
            raise RuntimeError("serving did not come up")
        topics = Topics.from_settings(s)
        bg: dict[str, Any] = {}
        stop_bg = threading.Event()

        def run_background() -> None:
            t0 = time.perf_counter()
            res = replay(s, background, rate=background_rate, progress=False, stop=stop_bg)
            bg.update(events=res.events, seconds=time.perf_counter() - t0)

        threading.Thread(target=run_background, daemon=True).start()
        client = httpx.Client(base_url=base, timeout=5)
        t_ready = time.perf_counter()
        if not wait_until(lambda: client.get("/readyz").status_code == 200, ready_timeout_s):
            raise RuntimeError(f"serving was not ready within {ready_timeout_s:.0f} s")
        ready_s = time.perf_counter() - t_ready
        time.sleep(warmup_s)  # let the background load reach steady state before probing
        caught_up_s, behind = _catch_up(s, background_rate, catch_up_timeout_s) if catch_up_timeout_s else (None, None)

        pushes: dict[str, float] = {}
        consumer = KafkaConsumer(topics.recommendations, auto_offset_reset="latest", enable_auto_commit=False, **client_config(s))
        consumer.poll(100)

        def watch_pushes() -> None:
            while not stop_bg.is_set():
                for msgs in consumer.poll(50).values():
                    now = time.time()
                    for m in msgs:
                        if m.key and m.key.startswith(b"probe-"):
                            pushes.setdefault(m.key.decode(), now)

        watcher = threading.Thread(target=watch_pushes, daemon=True)
        watcher.start()
        producer = KafkaProducer(linger_ms=0, acks=1, **client_config(s))
        results: dict[str, dict[str, list[float]]] = {"rating": {"visible": [], "pushed": [], "missed": []},
                                                      "comment": {"visible": [], "pushed": [], "missed": []}}
        plan = ["rating"] * probes + ["comment"] * comment_probes
        misses_in_a_row = not_run = 0
        for n, kind in enumerate(plan):
            if stop_after_misses is not None and misses_in_a_row >= stop_after_misses:
                not_run = len(plan) - n
                break
            user = f"probe-{uuid.uuid4().hex[:12]}"
            ev = _probe_event(kind, user, probe_item, n)
            t_pub = time.time()
            producer.send(topics.events, key=user.encode(), value=json.dumps(ev).encode())
            producer.flush()
            if not wait_until(functools.partial(_personalized, client, user), 15, interval=0.005):
                log.write(f"probe {n} ({kind}) published at {_clock(t_pub)}: not visible within 15 s\n")
                results[kind]["missed"].append(1)
                misses_in_a_row += 1
                continue
            misses_in_a_row = 0
            seen = time.time()
            results[kind]["visible"].append(seen - t_pub)
            log.write(f"probe {n} ({kind}) published at {_clock(t_pub)}: visible after {seen - t_pub:.3f} s\n")
            if wait_until(functools.partial(operator.contains, pushes, user), 3, interval=0.01):
                results[kind]["pushed"].append(pushes[user] - t_pub)
            time.sleep(0.2)
        stop_bg.set()
        watcher.join(2)
        wait_until(lambda: "events" in bg, 10, interval=0.05)
        consumer.close()
        producer.close()
        bg_rate = round(bg['events'] / bg['seconds'], 1) if bg.get('seconds') else None
        metrics = client.get("/metrics").text
        client.close()
    vis, com = results["rating"], results["comment"]
    return {
        "p50_s": _q(vis["visible"], 0.5),
        "p95_s": _q(vis["visible"], 0.95),
        "p99_s": _q(vis["visible"], 0.99),
        "max_s": _q(vis["visible"], 1.0),
        "mean_s": round(statistics.fmean(vis["visible"]), 4) if vis["visible"] else None,
        "version_live_p50_s": _q(vis["pushed"], 0.5),
        "version_live_p99_s": _q(vis["pushed"], 0.99),
        "probes": len(vis["visible"]),
        "probes_missed": len(vis["missed"]),
        "probes_not_run": not_run,
        "comment_p50_s": _q(com["visible"], 0.5),
        "comment_p95_s": _q(com["visible"], 0.95),
        "comment_p99_s": _q(com["visible"], 0.99),
        "comment_version_live_p50_s": _q(com["pushed"], 0.5),
        "comment_probes": len(com["visible"]),
        "comment_probes_missed": len(com["missed"]),
        "background_events_per_s": bg_rate,
        "ready_after_healthz_s": round(ready_s, 2),
        "caught_up_after_s": caught_up_s, "examples_behind_at_first_probe": behind,
        "targets": {"p50_s": 1.0, "p99_s": 3.0},
        "serving_feedback_latency_histogram_count": metric_sum(samples(metrics), "reco_serving_feedback_latency_seconds_count"),
        "serving_snapshots_published": metric_sum(samples(metrics), "reco_serving_snapshots_published_total"),
    }


def _cmd(args: argparse.Namespace, settings: ServingSettings) -> int:
    out = run_freshness(settings, probes=args.probes, comment_probes=args.comment_probes, background_rate=args.background_rate)
    print_result(out, args.json)
    return 0


def register_bench(bench: argparse._SubParsersAction) -> None:
    p = bench.add_parser("freshness", help="publish → visible latency with the whole loop under background load")
    p.add_argument("--probes", type=int, default=30, help="rating probes")
    p.add_argument("--comment-probes", type=int, default=10, help="comment probes (encoding on the path)")
    p.add_argument("--background-rate", type=float, default=1500, help="background events/s (>= 1000)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd)
