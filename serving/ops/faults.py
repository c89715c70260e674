"""``reco bench faults``: the whole loop under load while its roles are ``kill -9``-ed.

A synthetic stream with known ``event_id`` s (ratings, clicks, comments, invalid events and poison
bytes) is replayed at ≥ 1,000 events/s; meanwhile the trainer, a streamproc worker and a serving
replica are each killed with SIGKILL at a random moment. The supervisor restarts them; we measure,
per role, kill → healthy again:

- ``trainer``: the new process reports ``reco_trainer_active 1`` and a model version above the one
  it had at the kill (it resumed from its checkpoint and publishes again);
- ``streamproc``: the new worker has produced examples (``reco_streamproc_examples_produced_total``);
- ``serve``: ``/readyz`` is 200 at a version at least the trainer's version at the kill.

Then the accounting: every published id is either learned (``learned_ids.log``) or on the
dead-letter topic (``events_lost`` must be 0), and ids learned more than once are checked against
the documented bounds (trainer: only examples after the checkpoint it restored; streamproc: only
events after the consumer group's committed offsets at the kill).

The harness (:class:`FaultHarness`) is shared with ``tests/integration/test_faults.py``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from serving.ops.scrape import metric_sum, scrape
from serving.settings import ServingSettings
from streamproc.events import event_dict
from streamproc.runtime import poll, print_json

__all__ = ["FaultHarness", "synthetic_events", "poison_messages", "http_fuzz", "register_bench", "run_faults", "loop_settings",
           "scrape", "metric_sum"]

POISON_MARK = b"reco-poison:"


def synthetic_events(n: int, *, prefix: str = "f", seed: int = 0, n_users: int = 300, n_items: int = 500,
                     comment_every: int = 50, click_every: int = 3, invalid_every: int = 97) -> list[tuple[float, str, bytes]]:
    """``n`` events ``(event_time, user_id, json bytes)`` with ids ``{prefix}{i}``: mostly ratings,
    every ``click_every``-th a click, every ``comment_every``-th a comment, every
    ``invalid_every``-th invalid (rating out of range: it must be dead-lettered, not learned)."""
    rng = random.Random(seed)
    now = time.time()
    texts = ["loved it", "boring and long", "a wonderful, moving film", "dark but clever", "meh"]
    out = []
    for i in range(n):
        user, item = f"u{rng.randrange(n_users)}", f"i{rng.randrange(n_items)}"
        fields: dict[str, Any]
        if invalid_every and i % invalid_every == invalid_every - 1:
            kind, fields = "rating", {"rating": 99.0}
        elif comment_every and i % comment_every == comment_every - 1:
            kind, fields = "comment", {"text": texts[i % len(texts)], "rating": float(rng.randint(1, 5))}
        elif click_every and i % click_every == 1:
            kind, fields = "click", {}
        else:
            kind, fields = "rating", {"rating": float(rng.randint(1, 5))}
        ev = event_dict(kind, user, item, event_id=f"{prefix}{i}", event_time=now, **fields)
        out.append((now, user, json.dumps(ev).encode()))
    return out


def poison_messages(n: int = 12, *, big: int = 900_000) -> list[bytes]:
    """Undecodable or hostile messages, each starting with :data:`POISON_MARK` + its number (so the
    dead-letter topic can be checked): binary junk, invalid UTF-8, truncated JSON, deep nesting,
    a NaN rating, control characters, and one ``big``-byte message (near the broker's limit)."""
    kinds: list[Callable[[bytes], bytes]] = [
        lambda m: m + bytes(range(256)),
        lambda m: m + b"\xff\xfe\xfd{\"type\":\"rating\"",
        lambda m: m + b"[" * 10_000,
        lambda m: m + b'{"event_id": "x", "type": "rating", "rating": NaN}',
        lambda m: m + b"\x00\x1b[31m\r\n",
        lambda m: m + b"x" * big,
    ]
    return [kinds[i % len(kinds)](POISON_MARK + str(i).encode() + b":") for i in range(n)]


def dead_letter_id(value: bytes) -> str | None:
    """The id a dead letter stands for: ``poison:<n>`` for :func:`poison_messages`, else the event id."""
    if value.startswith(POISON_MARK):
        return "poison:" + value[len(POISON_MARK):].split(b":", 1)[0].decode()
    try:
        obj = json.loads(value)
        return obj.get("event_id") if isinstance(obj, dict) else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


@dataclass
class Kill:
    role: str
    at: float  # wall clock (time.time) of the SIGKILL
    recovery_s: float | None = None
    trainer_version: int | None = None  # the trainer's version at the kill
    checkpoint_offset: int | None = None  # trainer: examples offset of the newest checkpoint before the kill
    committed: dict[int, int] = field(default_factory=dict)  # streamproc: committed event offsets before the kill


class FaultHarness:
    """Drives a running loop: background load, kills with recovery timing, accounting.

    Parameters
    ----------
    settings
        The settings yielded by :func:`serving.ops.loop.running_loop`.
    sup
        Its :class:`serving.ops.loop.Supervisor` (roles ``streamproc``, ``trainer``, ``serve``).
    ports
        ``{"http": …, "streamproc": …, "trainer": …}`` (the roles' metrics ports).
    """

    def __init__(self, settings: ServingSettings, sup: Any, ports: dict[str, int]) -> None:
        from streamproc.topics import Topics

        self.settings = settings
        self.sup = sup
        self.ports = ports
        self.topics = Topics.from_settings(settings)
        self.base = f"http://127.0.0.1:{ports['http']}"
        self.published: list[str] = []  # ids handed to the broker
        self.kills: list[Kill] = []
        self._load: threading.Thread | None = None
        self._stop = threading.Event()
        self.load_result: Any = None

    # ------------------------------------------------------------------ observation
    def trainer_metrics(self) -> dict[str, float]:
        return scrape(f"http://127.0.0.1:{self.ports['trainer']}/metrics")

    def trainer_version(self) -> int | None:
        v = self.trainer_metrics().get("reco_trainer_model_version")
        return None if v is None else int(v)

    def readyz(self) -> tuple[int, dict[str, Any]]:
        import httpx

        try:
            r = httpx.get(f"{self.base}/readyz", timeout=2)
            return r.status_code, r.json()
        except (httpx.HTTPError, ValueError):
            return 0, {}

    def wait_ready(self, timeout: float = 180) -> None:
        poll(lambda: self.readyz()[0] == 200, timeout, "serving /readyz 200", 0.3)

    # ------------------------------------------------------------------ input
    def publish(self, events: list[tuple[float, str, bytes]], rate: float | None = None) -> int:
        from streamproc.replay import replay

        res = replay(self.settings, events, rate=rate, progress=False)
        self.published.extend(json.loads(v)["event_id"] for _, _, v in events[: res.events])
        return res.events

    def publish_raw(self, values: list[bytes]) -> None:
        """Raw messages (poison) to the events topic; :func:`dead_letter_id` names them."""
        from kafka import KafkaProducer

        from streamproc.kafka import client_config

        producer = KafkaProducer(max_request_size=self.settings.max_message_bytes, acks=1, **client_config(self.settings))
        try:
            for n, v in enumerate(values):
                producer.send(self.topics.events, value=v, key=f"poison{n}".encode())
            producer.flush(30)
        finally:
            producer.close()
        self.published.extend(i for i in map(dead_letter_id, values) if i is not None)

    def start_load(self, events: list[tuple[float, str, bytes]], rate: float) -> None:
        from streamproc.replay import replay

        def run() -> None:
            self.load_result = replay(self.settings, events, rate=rate, progress=False, stop=self._stop)

        self._events = events
        self._load = threading.Thread(target=run, name="fault-load", daemon=True)
        self._load.start()

    def stop_load(self) -> int:
        self._stop.set()
        assert self._load is not None
        self._load.join(60)
        n = self.load_result.events
        self.published.extend(json.loads(v)["event_id"] for _, _, v in self._events[:n])
        return n

    # ------------------------------------------------------------------ faults
    def kill(self, role: str, *, timeout: float = 120) -> Kill:
        """SIGKILL ``role`` (its supervisor name), wait until it is healthy again, return the timing."""
        from trainer.checkpoint import CheckpointStore

        old_pid = self.sup.pid(role)
        k = Kill(role, 0.0, trainer_version=self.trainer_version())
        kind = role.split("-")[0]
        if kind == "trainer":
            ck = CheckpointStore(self.settings.checkpoint_dir).latest()
            k.checkpoint_offset = None if ck is None else ck.offsets.get(f"{self.topics.examples}:0", 0)
        if kind == "streamproc":
            k.committed = self.committed(f"{self.settings.topic_prefix}streamproc")
        t0 = time.monotonic()
        k.at = time.time()
        os.kill(old_pid, signal.SIGKILL)
        self.kills.append(k)
        poll(lambda: self.sup.alive().get(role) and self.sup.pid(role) != old_pid, timeout, f"{role} restarted")
        if kind == "trainer":
            def healthy() -> bool:
                m = self.trainer_metrics()
                return m.get("reco_trainer_active") == 1 and m.get("reco_trainer_model_version", -1) > (k.trainer_version or 0)
        elif kind == "streamproc":
            def healthy() -> bool:
                return (metric_sum(scrape(f"http://127.0.0.1:{self.ports['streamproc']}/metrics"),
                                   "reco_streamproc_examples_produced_total") or 0) > 0
        else:
            def healthy() -> bool:
                code, body = self.readyz()
                return code == 200 and (body.get("version") or 0) >= (k.trainer_version or 0)
        poll(healthy, timeout, f"{role} healthy again after kill -9")
        k.recovery_s = round(time.monotonic() - t0, 2)
        return k

    def committed(self, group: str) -> dict[int, int]:
        from kafka import KafkaConsumer, TopicPartition

        from streamproc.kafka import client_config

        c = KafkaConsumer(group_id=group, enable_auto_commit=False, **client_config(self.settings))
        try:
            out = {}
            for p in range(self.settings.partitions):
                off = c.committed(TopicPartition(self.topics.events, p))
                out[p] = off if off is not None else 0
            return out
        finally:
            c.close()

    # ------------------------------------------------------------------ accounting
    def learned(self) -> list[str]:
        from trainer.checkpoint import CheckpointStore

        return CheckpointStore(self.settings.checkpoint_dir).learned_ids()

    def dead_letters(self) -> list[str]:
        from streamproc.kafka import read_all

        return [i for m in read_all(self.settings, self.topics.dead_letters, idle_ms=500) if (i := dead_letter_id(m.value))]

    def missing(self) -> set[str]:
        learned = set(self.learned())
        missing = set(self.published) - learned
        return missing - set(self.dead_letters()) if missing else missing

    def wait_accounted(self, timeout: float = 120) -> None:
        """Until every published id is learned (the trainer checkpoints every interval) or dead-lettered."""
        poll(lambda: not self.missing(), timeout, "every published id learned or dead-lettered", 1.0)

    def account(self) -> dict[str, Any]:
        """Lost ids, duplicates learned, and whether each duplicate lies inside its documented bound."""
        from streamproc.examples import ExampleBatch
        from streamproc.kafka import read_all

        learned = self.learned()
        dead = self.dead_letters()
        lost = set(self.published) - set(learned) - set(dead)
        counts = Counter(learned)
        relearned = {i for i, c in counts.items() if c > 1}
        # where each id sits on the examples topic (offset, Kafka timestamp)
        on_topic: dict[str, list[tuple[int, float]]] = {}
        for m in read_all(self.settings, self.topics.examples, idle_ms=500):
            for i in ExampleBatch.decode(m.value).event_ids:
                on_topic.setdefault(i, []).append((m.offset, m.timestamp / 1000.0))
        topic_dups = {i for i, places in on_topic.items() if len(places) > 1}
        # streamproc bound: an event emitted twice sits at or after the group's committed offset at the kill
        event_pos: dict[str, tuple[int, int]] = {}
        if topic_dups:
            for m in read_all(self.settings, self.topics.events, idle_ms=500):
                dead_id = dead_letter_id(m.value)
                if dead_id is not None and dead_id in topic_dups:
                    event_pos[dead_id] = (m.partition, m.offset)
        sp_kills = [k for k in self.kills if k.role.startswith("streamproc")]
        outside_sp = {i for i in topic_dups
                      if not any(event_pos.get(i, (0, -1))[1] >= k.committed.get(event_pos.get(i, (0, -1))[0], 0) for k in sp_kills)}
        # trainer bound: a re-learned example (not duplicated on the topic) lies in a batch at or after
        # the newest checkpoint's offset before the kill, published no later than the kill
        tr_kills = [k for k in self.kills if k.role.startswith("trainer")]
        window: set[str] = set()
        for k in tr_kills:
            window |= {i for i, places in on_topic.items()
                       if any(off >= (k.checkpoint_offset or 0) and ts <= k.at + 1.0 for off, ts in places)}
        trainer_relearned = relearned - topic_dups
        outside_tr = trainer_relearned - window
        return {
            "events_published": len(self.published),
            "events_learned": len(set(learned)),
            "events_dead_lettered": len(set(dead) & set(self.published)),
            "events_lost": len(lost),
            "lost_sample": sorted(lost)[:10],
            "duplicates_learned": sum(c - 1 for c in counts.values() if c > 1),
            "duplicated_by_streamproc": len(topic_dups),
            "relearned_by_trainer": len(trainer_relearned),
            "trainer_relearn_bound": len(window),
            "outside_bounds": sorted(outside_sp | outside_tr)[:10],
        }


# ---------------------------------------------------------------------- HTTP fuzz (bench)
def http_fuzz(cases: int = 2000, seed: int = 0) -> dict[str, int]:
    """Random poison bodies and query strings against ``create_app`` (no Kafka, a fake sink);
    returns ``{"fuzz_cases": n, "fuzz_crashes": <5xx answers>}``. The property-based version
    lives in ``tests/serving/test_fuzz_http.py``."""
    import math
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    from prometheus_client import CollectorRegistry

    from serving.app import create_app

    async def sink(topic: str, messages: list[Any]) -> None:
        return None

    rng = random.Random(seed)
    s = ServingSettings(api_key="k", topic_prefix="fz.", max_body_bytes=200_000)
    client = TestClient(create_app(s, start_kafka=False, registry=CollectorRegistry(), event_sink=sink), raise_server_exceptions=False)
    values: list[Any] = [None, True, -1, 0, 10**30, -1e300, math.nan, math.inf, "", "x" * 70_000, "\x00\x1b\n", [], {}, [[[]]],
                         "é" * 100, -1e-300, "2024-01-01"]
    fields = ["type", "event_id", "user_id", "item_id", "event_time", "rating", "text", "schema_version"]
    crashes = 0
    for n in range(cases):
        r = n % 4
        if r == 0:
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        elif r == 1:
            ev: dict[str, Any] = {"type": rng.choice(["rating", "click", "comment", "x"]), "user_id": "u", "item_id": "i", "rating": 3.0}
            for _ in range(rng.randrange(1, 4)):
                ev[rng.choice(fields)] = rng.choice(values)
            body = json.dumps([ev, {"type": "click", "user_id": "u", "item_id": "i"}]).encode()
        elif r == 2:
            depth = rng.randrange(1, 50_000)
            body = b"[" * depth + b"]" * rng.choice([depth, 0])
        else:
            q = "".join(rng.choice("k=&exclude_seen%00\xff1-9aZ/") for _ in range(rng.randrange(0, 40)))
            resp = client.get(f"/v1/users/u{rng.randrange(9)}/recommendations?{q}")
            crashes += resp.status_code >= 500 and resp.json().get("detail") != "no_model"
            continue
        resp = client.post("/v1/events", content=body, headers={"X-API-Key": "k"})
        crashes += resp.status_code >= 500
    return {"fuzz_cases": cases, "fuzz_crashes": int(crashes)}


# ---------------------------------------------------------------------- the bench
def loop_settings(**kw: Any) -> tuple[ServingSettings, dict[str, int], dict[str, dict[str, str]]]:
    from streamproc.broker import free_port

    ports = {"http": free_port(), "streamproc": free_port(), "trainer": free_port()}
    s = ServingSettings(http_port=ports["http"], topic_prefix=f"faults{uuid.uuid4().hex[:6]}.",
                 dashboard_sources=f"http://127.0.0.1:{ports['streamproc']}/metrics,http://127.0.0.1:{ports['trainer']}/metrics",
                 **{"checkpoint_interval_s": 2.0, "snapshot_interval_s": 5.0, **kw})
    role_env = {"streamproc": {"RECO_METRICS_PORT": str(ports["streamproc"])}, "trainer": {"RECO_METRICS_PORT": str(ports["trainer"])}}
    return s, ports, role_env


def run_faults(settings: ServingSettings, *, rate: float = 1200, events: int = 200_000, fuzz_cases: int = 2000,
               seed: int = 0, log: Any = None) -> dict[str, Any]:
    from serving.ops.loop import running_loop

    log = log if log is not None else io.StringIO()
    rng = random.Random(seed)
    base, ports, role_env = loop_settings(**{k: getattr(settings, k) for k in ("partitions",)})
    out: dict[str, Any] = {"rate": rate}
    with running_loop(base, log=log, role_env=role_env) as (s, sup):
        h = FaultHarness(s, sup, ports)
        poll(lambda: h.readyz()[0] in (200, 503), 180, "serving up", 0.3)
        h.publish(synthetic_events(3000, prefix="warm", seed=seed))
        h.wait_ready()
        h.publish_raw(poison_messages())
        h.start_load(synthetic_events(events, prefix="f", seed=seed + 1), rate)
        t0 = time.monotonic()
        for role in ("trainer", "streamproc", "serve"):
            time.sleep(rng.uniform(1.0, 4.0))  # a random point under load
            h.kill(role)
        sent = h.stop_load()
        out["load_events_per_s"] = round(sent / (time.monotonic() - t0), 1)
        h.wait_accounted(180)
        final = h.trainer_version()
        poll(lambda: h.readyz()[1].get("version") == h.trainer_version(), 60, "serving at the trainer's version")
        out["restarts"] = {r: sup.restarts(r) for r in ("streamproc", "trainer", "serve")}
        out["final_version"] = final
        sup.stop()
        acct = h.account()  # after a clean stop the trainer has checkpointed everything it learned
    out.update(acct)
    out["recovery_s"] = {k.role: k.recovery_s for k in h.kills}
    out.update(http_fuzz(fuzz_cases, seed))
    return out


def _cmd(args: argparse.Namespace, settings: ServingSettings) -> int:
    result = run_faults(settings, rate=args.rate, fuzz_cases=args.fuzz_cases, seed=args.seed)
    if args.json:
        print_json(result)
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    return 0 if result["events_lost"] == 0 and result["fuzz_crashes"] == 0 else 1


def register_bench(bench: argparse._SubParsersAction) -> None:
    p = bench.add_parser("faults", help="kill -9 each role under >= 1,000 events/s load; lost events, duplicates, recovery times, HTTP fuzz")
    p.add_argument("--rate", type=float, default=1200, help="background events/s (>= 1000)")
    p.add_argument("--fuzz-cases", type=int, default=2000, help="random poison HTTP requests")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd)
