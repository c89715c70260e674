"""``reco bench serving``: HTTP top-k latency of ``reco serve``, steady, during model swaps, filtered.

The bench publishes a synthetic model (≥ 9,000 items, ≥ 600 users) as a snapshot to the broker and
a catalogue of item records for it (10 categories of ~10 % of the items each, ~1 % unavailable),
runs ``reco serve`` (uvicorn) as a subprocess, and drives it from a second process with
``concurrency`` async HTTP clients: steady, while deltas (~200 rows) and full snapshots arrive
through Kafka at ``swap_rate`` updates per second, and *filtered* (one category, ~10 % of the
items, plus 50 excluded ids of that category: ``p99_ms_filtered``, ``short_answers_filtered`` =
answers with fewer than k items although k eligible items exist). A correctness sweep after the
timed phases asks every user once with the same rules and counts answers that break them.

The model is a :class:`serving.bench.synthetic.SyntheticModel`.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np

from serving.bench.synthetic import SyntheticModel
from serving.ops.scrape import scrape
from serving.settings import ServingSettings
from streamproc.runtime import embedded_or_configured, print_json, quantile, wait_until

__all__ = ["run_bench", "register_bench"]


# ---------------------------------------------------------------------------------- client
async def _client(url: str, users: list[str], concurrency: int, duration: float, k: int, query: str = "") -> dict[str, Any]:
    """``concurrency`` keep-alive HTTP/1.1 connections, each sending one request at a time.

    A minimal raw-socket client: on a 2-core machine the load generator competes with the
    server, and httpx spends several times the server's CPU per request.
    """
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    lat: list[float] = []
    errors = [0]
    short = [0]
    stop_at = time.perf_counter() + duration

    async def worker(n: int) -> None:
        rng = np.random.default_rng(n)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            while time.perf_counter() < stop_at:
                user = users[int(rng.integers(len(users)))]
                req = f"GET /v1/users/{user}/recommendations?k={k}{query} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode()
                t0 = time.perf_counter()
                try:
                    writer.write(req)
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line[:15].lower() == b"content-length:":
                            length = int(line[15:])
                    body = await reader.readexactly(length)
                    ok = head.startswith(b"HTTP/1.1 200") and b'"items":[{' in body
                    if ok and body.count(b'"item_id"') < k:  # every bench user has far more than k eligible items
                        short[0] += 1
                except Exception:  # noqa: BLE001 - every failure is an error of the run
                    ok = False
                    writer.close()
                    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
                lat.append(time.perf_counter() - t0)
                if not ok:
                    errors[0] += 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    wall = time.perf_counter() - t0
    return {"requests": len(lat), "errors": errors[0], "short": short[0], "seconds": wall, "latencies_ms": [round(x * 1000, 4) for x in lat]}


def _client_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--users", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=6)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--query", default="", help="appended to every request's query string (request-time rules)")
    a = p.parse_args(argv)
    # ~5% unknown users exercise the fallback path too.
    users = [f"u{i}" for i in range(a.users)] + [f"new{i}" for i in range(max(1, a.users // 20))]
    print(json.dumps(asyncio.run(_client(a.url, users, a.concurrency, a.duration, a.k, a.query))), flush=True)
    return 0


def _run_client(url: str, users: int, concurrency: int, duration: float, query: str = "") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "serving.bench.http", "--url", url, "--users", str(users),
         "--concurrency", str(concurrency), "--duration", str(duration), "--query", query],
        stdout=subprocess.PIPE, text=True,
    )


# ---------------------------------------------------------------------------------- catalogue
N_CATEGORIES = 10
FILTER_CATEGORY = "cat3"


def bench_catalog(item_ids: list[str], *, unavailable_every: int = 97, excluded: int = 50) -> tuple[list[dict[str, Any]], list[str]]:
    """Item records for ``item_ids`` (item n in ``cat{n % 10}``, every ``unavailable_every``-th
    unavailable) and ``excluded`` ids of :data:`FILTER_CATEGORY` for the filtered run.

    >>> recs, ex = bench_catalog([f"i{n}" for n in range(200)], excluded=3)
    >>> recs[3]["categories"], ex, sum(not r["available"] for r in recs)
    (['cat3'], ['i13', 'i23', 'i33'], 3)
    """
    now = time.time()
    recs: list[dict[str, Any]] = [{"item_id": i, "title": f"Item {i}", "categories": [f"cat{n % N_CATEGORIES}"], "available": n % unavailable_every != 0,
             "updated_at": now} for n, i in enumerate(item_ids)]
    members: list[str] = [r["item_id"] for r in recs if r["categories"] == [FILTER_CATEGORY] and r["available"]]
    return recs, members[1 : excluded + 1]


def _filter_query(excluded: list[str]) -> str:
    return f"&category={FILTER_CATEGORY}&exclude={','.join(excluded)}"


def _sweep(url: str, users: int, k: int, excluded: list[str], unavailable: set[str]) -> dict[str, int]:
    """Every user once with the filter and ``fields=categories``: answers that are short or break a rule."""
    import httpx

    forbidden = set(excluded) | unavailable
    short = broken = 0
    with httpx.Client(timeout=5.0) as client:
        for u in [f"u{i}" for i in range(users)] + [f"new{i}" for i in range(20)]:
            body = client.get(f"{url}/v1/users/{u}/recommendations?k={k}{_filter_query(excluded)}&fields=categories").json()
            items = body.get("items", [])
            short += len(items) < k
            broken += sum(i["item_id"] in forbidden or FILTER_CATEGORY not in i.get("categories", []) for i in items)
    return {"sweep_answers": users + 20, "sweep_short_answers": short, "sweep_rule_violations": broken}


# ---------------------------------------------------------------------------------- bench
def _get_json(url: str) -> tuple[int, Any]:
    import httpx

    try:
        r = httpx.get(url, timeout=2.0)
        return r.status_code, r.json()
    except Exception:  # noqa: BLE001
        return 0, None


def _swaps(url: str) -> float:
    return scrape(url + "/metrics").get("reco_serving_model_swaps_total", 0.0)


def _catalog_size(url: str) -> float:
    return scrape(url + "/metrics").get("reco_serving_catalog_items", 0.0)  # 0 while not up yet


def _at_version(url: str, version: int) -> bool:
    return bool(_get_json(url + "/readyz")[1]["version"] == version)


def _version_of(data: bytes) -> int:
    hlen = int.from_bytes(data[:8], "little")
    return int(json.loads(json.loads(data[8 : 8 + hlen])["__metadata__"]["reco"])["version"])


def _anchors(model: SyntheticModel) -> dict[str, float | None]:
    """In-process numbers of the same run: top-k without HTTP (plain and filtered), delta build, full-copy cost."""
    from serving.catalog import Catalog, Rules
    from serving.model import ServingModel

    base = ServingModel.build(None, model.snapshot(max_bytes=1 << 40))
    recs, excluded = bench_catalog(model.item_ids)
    catalog = Catalog()
    for r in recs:
        catalog.apply_json(json.dumps(r).encode())
    rules = Rules.build([FILTER_CATEGORY], excluded)
    times, filtered = [], []
    for n in range(2000):
        t0 = time.perf_counter()
        base.recommend(f"u{n % model.n_users}", 10, True)
        t1 = time.perf_counter()
        catalog.recommend(base, f"u{n % model.n_users}", 10, True, rules)
        filtered.append(time.perf_counter() - t1)
        times.append(t1 - t0)
    build = []
    m = base
    for _ in range(30):
        d = model.delta(200, published=[])
        t0 = time.perf_counter()
        m = ServingModel.build(m, [d])
        build.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(10):
        _ = (model.item_factors.copy(), model.user_factors.copy(), model.item_bias.copy(), model.item_popularity.copy())
    full_copy = (time.perf_counter() - t0) / 10
    return {"inproc_topk_p50_us": quantile(times, 0.50, scale=1e6, digits=1), "inproc_topk_p99_us": quantile(times, 0.99, scale=1e6, digits=1),
            "inproc_topk_filtered_p50_us": quantile(filtered, 0.50, scale=1e6, digits=1),
            "inproc_topk_filtered_p99_us": quantile(filtered, 0.99, scale=1e6, digits=1),
            "delta_build_p50_ms": quantile(build, 0.50, scale=1000, digits=3), "full_copy_ms": round(full_copy * 1000, 3)}


def run_bench(settings: ServingSettings, *, items: int = 10_000, users: int = 1000, factors: int = 32, concurrency: int = 6,
              duration: float = 8.0, swap_rate: float = 4.0, snapshot_every: int = 8, http: str = "auto", rounds: int = 4) -> dict[str, Any]:
    from kafka import KafkaProducer

    from streamproc.broker import free_port
    from streamproc.kafka import client_config
    from streamproc.topics import Topics

    model = SyntheticModel(users, items, factors, seed=settings.seed, candidates=50)  # scored as HybridMF's export is
    anchors = _anchors(SyntheticModel(users, items, factors, seed=settings.seed + 1, candidates=50))
    with embedded_or_configured(settings) as s:
        topic = Topics.from_settings(s).model_updates
        producer = KafkaProducer(max_request_size=s.max_message_bytes * 2, acks=1, linger_ms=0, **client_config(s))

        def publish(updates: list[bytes]) -> None:
            for u in updates:
                producer.send(topic, u)
            producer.flush()

        publish([u.encode() for u in model.snapshot(max_bytes=s.max_message_bytes)])
        model_version0 = model.version
        from streamproc.publisher import publish_items

        records, excluded = bench_catalog(list(model.item_ids))
        unavailable = {r["item_id"] for r in records if not r["available"]}
        publish_items(s, records)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "RECO_KAFKA_BOOTSTRAP": s.kafka_bootstrap, "RECO_TOPIC_PREFIX": s.topic_prefix,
               "RECO_HTTP_PORT": str(port), "RECO_HTTP_HOST": "127.0.0.1"}
        server = subprocess.Popen([sys.executable, "-m", "streamproc.cli", "--log-level", "WARNING", "serve", "--http", http], env=env)
        try:
            def up() -> bool:
                code, body = _get_json(url + "/readyz")
                return code == 200 and body["version"] == model_version0 and _catalog_size(url) >= len(records)

            if not wait_until(lambda: server.poll() is not None or up(), 60) or server.poll() is not None:
                raise RuntimeError(f"reco serve did not become ready: {_get_json(url + '/readyz')}")
            # warm-up
            _run_client(url, users, concurrency, 1.0).communicate()

            # Updates are encoded up front so the bench's own CPU does not compete with the server.
            planned = []
            for n in range(1, int(duration * swap_rate * 1.5) + 2):
                if n % snapshot_every == 0:
                    planned.append([u.encode() for u in model.snapshot(max_bytes=s.max_message_bytes)])
                else:
                    planned.append([model.delta(200).encode()])
            swaps_before = _swaps(url)
            swapping = threading.Event()
            done = threading.Event()
            published = [0]
            last_version = [model_version0]
            pub_lock = threading.Lock()

            def swapper() -> None:
                for msgs in planned:
                    while not swapping.wait(0.05):
                        if done.is_set():
                            return
                    if done.is_set():
                        return
                    t0 = time.perf_counter()
                    with pub_lock:
                        if not swapping.is_set():
                            continue
                        publish(msgs)
                        published[0] += 1
                        last_version[0] = _version_of(msgs[-1])
                    done.wait(max(0.0, 1.0 / swap_rate - (time.perf_counter() - t0)))

            th = threading.Thread(target=swapper, daemon=True)
            th.start()
            # Steady and swap windows alternate, so load from outside the bench hits both alike.
            phases: dict[str, dict[str, Any]] = {p: {"lat": [], "errors": 0, "short": 0, "seconds": 0.0} for p in ("steady", "swaps", "filtered")}
            window = duration / rounds
            swap_wall = 0.0
            for _ in range(rounds):
                for phase in ("steady", "swaps", "filtered"):
                    client = _run_client(url, users, concurrency, window, _filter_query(excluded) if phase == "filtered" else "")
                    if phase == "swaps":
                        swapping.set()
                        t_set = time.perf_counter()
                    res = json.loads(client.communicate()[0])
                    if phase == "swaps":
                        swapping.clear()
                        swap_wall += time.perf_counter() - t_set
                    if phase == "swaps":  # let the last update land before the next steady window
                        with pub_lock:
                            target = last_version[0]
                        wait_until(functools.partial(_at_version, url, target), 10, interval=0.05)
                    ph = phases[phase]
                    ph["lat"] += res["latencies_ms"]
                    ph["errors"] += res["errors"]
                    ph["short"] += res["short"]
                    ph["seconds"] += res["seconds"]
            done.set()
            th.join()
            final = last_version[0]
            wait_until(functools.partial(_at_version, url, final), 30, interval=0.1)
            swaps = _swaps(url) - swaps_before
            _, ready = _get_json(url + "/readyz")
            st, sw, fl = phases["steady"], phases["swaps"], phases["filtered"]
            sweep = _sweep(url, users, 10, excluded, unavailable)
        finally:
            t_stop = time.perf_counter()
            server.terminate()  # SIGTERM: graceful shutdown
            exit_code = server.wait(30)
            stop_s = time.perf_counter() - t_stop
            producer.close()
    return {
        "items": items, "users": users, "factors": factors, "concurrency": concurrency, "seconds_per_phase": duration,
        "p50_ms": quantile(st["lat"], 0.50, digits=3), "p99_ms": quantile(st["lat"], 0.99, digits=3),
        "rps": round(len(st["lat"]) / st["seconds"], 1), "requests": len(st["lat"]), "errors": st["errors"],
        "p50_ms_during_swaps": quantile(sw["lat"], 0.50, digits=3), "p99_ms_during_swaps": quantile(sw["lat"], 0.99, digits=3),
        "rps_during_swaps": round(len(sw["lat"]) / sw["seconds"], 1), "requests_during_swaps": len(sw["lat"]),
        "errors_during_swaps": sw["errors"], "updates_published": published[0],
        "p50_ms_filtered": quantile(fl["lat"], 0.50, digits=3), "p99_ms_filtered": quantile(fl["lat"], 0.99, digits=3),
        "rps_filtered": round(len(fl["lat"]) / fl["seconds"], 1), "requests_filtered": len(fl["lat"]), "errors_filtered": fl["errors"],
        "short_answers_filtered": fl["short"], **sweep,
        "filter": {"category": FILTER_CATEGORY, "category_items": sum(r["categories"] == [FILTER_CATEGORY] for r in records),
                   "excluded_ids": len(excluded), "unavailable_items": len(unavailable), "k": 10},
        "updates_per_s": round(published[0] / swap_wall, 2), "swaps_observed": int(swaps), "rounds": rounds,
        "final_version_served": ready["version"], "final_version_published": final,
        "delta_rows": 200, "snapshot_every_n_updates": snapshot_every, **anchors,
        "targets": {"p99_ms": 10.0, "p99_ms_during_swaps": "<= 2 x p99_ms", "errors_during_swaps": 0, "p99_ms_filtered": 10.0,
                    "short_answers_filtered": 0},
        "server_http": http, "server_exit_code_on_sigterm": exit_code, "server_stop_s": round(stop_s, 2),
        "client": "raw asyncio HTTP/1.1 keep-alive, second process", "load_avg_1m": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
        "note": "client and server share the machine's cores (and other engineers' work)",
    }


def _cmd_bench_serving(args: argparse.Namespace, settings: ServingSettings) -> int:
    out = run_bench(settings, items=args.items, users=args.users, concurrency=args.concurrency,
                    duration=args.duration, swap_rate=args.swap_rate, http=args.server_http, rounds=args.rounds)
    if args.json:
        print_json(out)
    else:
        print(f"steady p50 {out['p50_ms']} ms p99 {out['p99_ms']} ms {out['rps']} req/s; during swaps "
              f"p99 {out['p99_ms_during_swaps']} ms, {out['errors_during_swaps']} errors, {out['swaps_observed']} swaps; filtered "
              f"(category + 50 excluded ids) p99 {out['p99_ms_filtered']} ms, {out['short_answers_filtered']} short answers")
    return 0


def register_bench(bench: argparse._SubParsersAction) -> None:
    p = bench.add_parser("serving", help="HTTP top-k latency: steady, during model swaps, and with request-time rules (filtered)")
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=6, help="concurrent HTTP clients (second process)")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per phase (steady, swaps, filtered)")
    p.add_argument("--rounds", type=int, default=4, help="alternating steady/swap windows the phases are split into")
    p.add_argument("--swap-rate", type=float, default=4.0, help="model updates per second during the swap phase")
    p.add_argument("--server-http", default="auto", choices=["auto", "h11", "httptools"], help="uvicorn HTTP implementation of the server")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_bench_serving)


if __name__ == "__main__":
    sys.exit(_client_main(sys.argv[1:]))
