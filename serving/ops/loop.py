"""The whole loop on one machine: ``reco up`` and ``reco demo`` (``reco bench freshness``,
``reco bench erasure`` and the fault harness run it too).

``reco up`` starts the embedded broker (unless ``RECO_KAFKA_BOOTSTRAP`` is set), creates the
topics and runs streamproc, trainer and serving as supervised child processes: one merged log
stream (each line prefixed with its role), a crashed role is restarted with back-off, and Ctrl-C /
SIGTERM stops them in pipeline order (streamproc finishes its in-flight events first, then the
trainer publishes a last update and checkpoints, then serving) before the broker stops.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from serving.settings import ServingSettings
from streamproc.runtime import METRICS_PORTS, embedded_or_configured, stop_on_signals, wait_until
from streamproc.sources import add_source_args

__all__ = ["Supervisor", "Role", "register"]

ROLES = ("streamproc", "trainer", "serve")


@dataclass
class Role:
    name: str
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[str] | None = None
    restarts: int = 0
    started_at: float = 0.0
    log_thread: threading.Thread | None = None


@dataclass
class Supervisor:
    """Runs the roles as child processes against ``settings.kafka_bootstrap``.

    ``roles`` maps a role name to its ``reco`` arguments; ``env`` adds environment per role.
    """

    settings: ServingSettings
    roles: dict[str, list[str]] = field(default_factory=lambda: {r: [r] for r in ROLES})
    role_env: dict[str, dict[str, str]] = field(default_factory=dict)
    restart: bool = True
    log: Any = sys.stderr
    _roles: dict[str, Role] = field(default_factory=dict, init=False)
    _stopping: bool = field(default=False, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def base_env(self) -> dict[str, str]:
        """The children run with exactly the supervisor's settings (not just its environment)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECO_")}
        env["HF_HUB_OFFLINE"] = "1"
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.settings.to_env())
        return env

    def start(self) -> Supervisor:
        for name, args in self.roles.items():
            role = Role(name, [sys.executable, "-m", "streamproc.cli", *args], {**self.base_env(), **self.role_env.get(name, {})})
            self._roles[name] = role
            self._spawn(role)
        threading.Thread(target=self._watch, name="supervisor", daemon=True).start()
        return self

    def _spawn(self, role: Role) -> None:
        role.proc = subprocess.Popen(
            role.argv, env=role.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor only; it stops children in order
        )
        role.started_at = time.monotonic()
        role.log_thread = threading.Thread(target=self._pump, args=(role, role.proc), daemon=True)
        role.log_thread.start()

    def _pump(self, role: Role, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        width = max(len(r) for r in self.roles)
        for line in proc.stdout:
            with self._lock:
                self.log.write(f"{role.name:<{width}} | {line}")
                self.log.flush()

    def _watch(self) -> None:
        while not self._stopping:
            for role in list(self._roles.values()):
                if self._stopping:
                    return
                if role.proc is not None and role.proc.poll() is not None and self.restart:
                    backoff = min(10.0, 0.5 * 2 ** min(role.restarts, 5))
                    if time.monotonic() - role.started_at < 30:
                        time.sleep(backoff)  # crash loop: back off before restarting
                    if self._stopping:
                        return
                    with self._lock:
                        self.log.write(f"supervisor: {role.name} exited with status {role.proc.returncode}; restarting\n")
                    role.restarts += 1
                    self._spawn(role)
            time.sleep(0.2)

    def pid(self, name: str) -> int:
        proc = self._roles[name].proc
        assert proc is not None
        return proc.pid

    def restarts(self, name: str) -> int:
        return self._roles[name].restarts

    def alive(self) -> dict[str, bool]:
        return {n: r.proc is not None and r.proc.poll() is None for n, r in self._roles.items()}

    def stop(self, timeout: float = 30.0) -> dict[str, int | None]:
        """SIGTERM each role in pipeline order and wait for it; SIGKILL after ``timeout``."""
        self._stopping = True
        codes: dict[str, int | None] = {}
        for name in self.roles:
            role = self._roles.get(name)
            if role is None or role.proc is None:
                continue
            if role.proc.poll() is None:
                role.proc.send_signal(signal.SIGTERM)
                try:
                    role.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    role.proc.kill()
                    role.proc.wait()
            codes[name] = role.proc.returncode
            if role.log_thread is not None:
                role.log_thread.join(2)
        return codes

    def __enter__(self) -> Supervisor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_loop(settings: ServingSettings, *, log: Any = sys.stderr, roles: dict[str, list[str]] | None = None,
                 role_env: dict[str, dict[str, str]] | None = None) -> Iterator[tuple[ServingSettings, Supervisor]]:
    """Broker (embedded unless configured) + topics + supervised roles, torn down on exit."""
    with contextlib.ExitStack() as stack:
        s = stack.enter_context(embedded_or_configured(settings))
        if not settings.kafka_bootstrap:
            # The embedded broker keeps nothing across runs, so checkpoints of an earlier run would
            # point at offsets that no longer exist: each embedded run checkpoints afresh.
            ckpt = stack.enter_context(tempfile.TemporaryDirectory(prefix="reco-checkpoints-"))
            s = dataclasses.replace(s, checkpoint_dir=ckpt)
        sup = Supervisor(s, log=log, role_env=role_env or {}) if not roles else Supervisor(s, roles, log=log, role_env=role_env or {})
        stack.enter_context(sup)
        yield s, sup


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=1.0).status_code < 500
    except httpx.HTTPError:
        return False


def wait_http(url: str, timeout: float = 120.0, stop: threading.Event | None = None) -> bool:
    """Whether ``url`` answered (any status below 500) within ``timeout`` seconds, before ``stop``."""
    return bool(wait_until(functools.partial(_answers, url), timeout, stop=stop))


def _cmd_up(args: argparse.Namespace, settings: ServingSettings) -> int:
    stop = stop_on_signals()
    with running_loop(settings) as (s, sup):
        base = f"http://{s.http_host}:{s.http_port}"
        worker_metrics = ", ".join(f":{port}/metrics" for port in METRICS_PORTS.values())
        print(f"reco up: broker {s.kafka_bootstrap}; API {base}/v1/users/<id>/recommendations; "
              f"dashboard {base}/dashboard; be the user {base}/try; metrics {base}/metrics, {worker_metrics} (Ctrl-C to stop)",
              file=sys.stderr, flush=True)
        deadline = time.monotonic() + args.duration if args.duration else None
        while not stop.wait(0.5):
            if deadline and time.monotonic() > deadline:
                break
        print("reco up: stopping roles (in-flight work finishes, trainer checkpoints)", file=sys.stderr, flush=True)
    return 0


# ------------------------------------------------------------------------------------ demo
def _summary_line(data: dict[str, Any]) -> str:
    """One line of the demo's live summary, in words a newcomer reads without the docs.

    >>> _summary_line({})
    'starting: waiting for the first events to reach the stream workers'
    >>> _summary_line({"events_per_s": 300.4, "examples_per_s": 290.0, "model_version": 0})
    '300 events/s in, 290/s learned | no model yet: serving answers with the items popular so far'
    >>> _summary_line({"events_per_s": 300, "examples_per_s": 300, "model_version": 48, "feedback_latency_p50_s": 0.22,
    ...                "feedback_latency_p99_s": 1.65, "prequential_rmse": 0.9418, "dead_letters": 0})
    '300 events/s in, 300/s learned | model v48 | feedback visible in 0.22 s (p50), 1.65 s (p99) | rating error (RMSE) 0.942 | 0 bad events'
    """
    def num(key: str) -> float | None:
        v = data.get(key)
        return None if v is None else float(v)

    eps, xps, version = num("events_per_s"), num("examples_per_s"), num("model_version")
    if eps is None:
        return "starting: waiting for the first events to reach the stream workers"
    parts = [f"{eps:,.0f} events/s in" + ("" if xps is None else f", {xps:,.0f}/s learned")]
    if not version:
        parts.append("no model yet: serving answers with the items popular so far")
        return " | ".join(parts)
    parts.append(f"model v{version:.0f}")
    p50, p99 = num("feedback_latency_p50_s"), num("feedback_latency_p99_s")
    if p50 is not None:
        parts.append(f"feedback visible in {p50:.2f} s (p50)" + ("" if p99 is None else f", {p99:.2f} s (p99)"))
    rmse, ndcg = num("prequential_rmse"), num("prequential_ndcg_at_10")
    if rmse is not None:
        parts.append(f"rating error (RMSE) {rmse:.3f}" + ("" if ndcg is None else f", NDCG@10 {ndcg:.3f}"))
    drift, dead = num("drift_detections"), num("dead_letters")
    if drift:
        parts.append(f"{drift:.0f} drift detections")
    if dead is not None:
        parts.append(f"{dead:,.0f} bad events")
    return " | ".join(parts)


def _cmd_demo(args: argparse.Namespace, settings: ServingSettings) -> int:
    import secrets

    import httpx

    from streamproc.replay import replay
    from streamproc.sources import event_source

    stop = stop_on_signals()
    generated = not (args.dataset or args.reviews)
    speed = args.speed or ("300" if generated else "2000")
    rate = None if speed == "max" else _positive(speed, "--speed")
    # Everything the demo needs is checked before anything starts: a bad --dataset is one line.
    src = event_source(args, n=args.limit, rate=rate or 1000.0)
    events = src.events if src.generated or args.limit is None else list(src.events)[: args.limit]
    log = open(args.log_file, "a") if args.log_file else sys.stderr
    key_given = bool(settings.api_key)
    if not settings.api_key and not settings.auth_disabled:
        # the demo's own write key: the /try page (same origin only) posts events with it
        settings = dataclasses.replace(settings, api_key=secrets.token_urlsafe(24))
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="reco-demo-"))
        serve = ["serve", "--try-writes"]
        if src.catalog:
            catalog = os.path.join(tmp, "catalog.json")
            with open(catalog, "w") as f:
                json.dump(src.catalog, f, separators=(",", ":"))
            serve += ["--catalog", catalog]
        roles = {"streamproc": ["streamproc"], "trainer": ["trainer"], "serve": serve}
        s, sup = stack.enter_context(running_loop(settings, log=log, roles=roles))
        base = f"http://{s.http_host}:{s.http_port}"
        if not wait_http(f"{base}/healthz", 180, stop):
            print("reco demo: serving did not come up; see the log above", file=sys.stderr)
            return 1
        # Publish once the workers are up (their /metrics answer): events sent while they still
        # load the encoder would wait as a backlog, and the first minute would show its latency.
        deadline = time.monotonic() + 120
        for url in filter(None, s.dashboard_sources.split(",")):
            wait_http(url.strip(), max(1.0, deadline - time.monotonic()), stop)
        users = (src.catalog or {}).get("users") or [{"user_id": "1"}]
        first_user = users[0]["user_id"]
        print(f"\nreco demo is up (broker {s.kafka_bootstrap})\n"
              f"  be the user: {base}/try   <- pick a user, rate or comment, watch their top 10 change\n"
              f"  dashboard:   {base}/dashboard\n"
              f"  API:         {base}/v1/users/{first_user}/recommendations?k=10\n"
              f"  post events: {base}/v1/events with X-API-Key: "
              f"{'(none needed: RECO_AUTH_DISABLED)' if s.auth_disabled else 'the RECO_API_KEY you started with' if key_given else 'a key made for this run (set RECO_API_KEY to choose it)'}\n"
              f"  metrics:     {base}/metrics  {'  '.join(f'http://{s.metrics_host}:{p}/metrics' for p in METRICS_PORTS.values())}\n"
              f"  more load:   RECO_KAFKA_BOOTSTRAP={s.kafka_bootstrap} RECO_TOPIC_PREFIX={s.topic_prefix} reco load --rate 1000 --duration 60\n"
              f"the loop: events -> streamproc (validates, encodes comments) -> trainer (learns from every event) -> "
              f"serving (swaps in each new model version, several a second)\n"
              f"publishing {src.label} at {speed} events/s; Ctrl-C to stop\n", flush=True)
        from streamproc.items import catalog_records
        from streamproc.publisher import publish_items

        publish_items(s, catalog_records(src.catalog))  # the catalogue as item records (items topic), before the events
        result: dict[str, Any] = {}
        stop_replay = threading.Event()
        t = threading.Thread(target=lambda: result.update(r=replay(s, events, rate=rate, progress=False, stop=stop_replay)), daemon=True)
        t.start()
        t0 = time.monotonic()
        while not stop.wait(2.0):
            try:
                data = httpx.get(f"{base}/dashboard/data", timeout=2).json().get("summary", {})
            except (httpx.HTTPError, ValueError):
                data = {}
            print(f"[{time.monotonic() - t0:6.0f} s] {_summary_line(data)}", flush=True)
            if args.duration and time.monotonic() - t0 > args.duration:
                break
        stop_replay.set()
        t.join(10)
        if "r" in result:
            print(f"published {result['r'].events:,} events at {result['r'].events_per_s:,.0f} events/s", flush=True)
    return 0


def _positive(raw: str, flag: str) -> float:
    from streamproc.errors import RecoError

    try:
        v = float(raw)
    except ValueError:
        v = float("nan")
    if not (v > 0 and v != float("inf")):
        raise RecoError(f"{flag} must be a positive number of events per second or 'max', got {raw!r}")
    return v


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add ``reco up`` and ``reco demo``."""
    p = commands.add_parser("up", help="run the whole service (broker, topics, streamproc, trainer, serving) supervised")
    p.add_argument("--duration", type=float, default=0, help="stop after this many seconds (default: until Ctrl-C)")
    p.set_defaults(func=_cmd_up)

    p = commands.add_parser("demo", help="reco up + built-in demo data (or --dataset/--reviews) + the /try page + a live summary")
    add_source_args(p)
    p.add_argument("--speed", "--rate", dest="speed", default=None,
                   help="events per second, or 'max' (default 300 for the demo data, 2000 for a dataset)")
    p.add_argument("--limit", type=int, default=None, help="publish only the first N events (default: all; the demo data has no end)")
    p.add_argument("--duration", type=float, default=0, help="stop after this many seconds (default: until Ctrl-C)")
    p.add_argument("--log-file", help="write the roles' logs here instead of stderr")
    p.set_defaults(func=_cmd_demo)
