"""What every ``reco`` command shares at run time, whatever its package.

- where Kafka is: :func:`client_settings` (a client command with no ``RECO_KAFKA_BOOTSTRAP`` talks
  to ``reco broker``'s default address) and :func:`embedded_or_configured` (the configured cluster,
  or an embedded broker started for the run);
- signals → stop: :func:`stop_on_signals` / :func:`signals_stop` turn SIGINT and SIGTERM into a
  :class:`threading.Event` the command's loop waits on;
- deadline polling: :func:`wait_until` (a condition's first true value, or None when the time is
  up or a stop event is set) and :func:`poll` (the same, ``TimeoutError`` naming what it waited for);
- the worker roles' ``/metrics`` ports: :data:`METRICS_PORTS`, :func:`metrics_port`;
- output: :func:`print_json`, :func:`print_result` (a bench prints one JSON object), :func:`quantile`.

Examples
--------
>>> poll(lambda: 42, 1.0, "the answer")
42
>>> poll(lambda: 0, 0.05, "nothing", interval=0.01)
Traceback (most recent call last):
...
TimeoutError: timed out after 0.05 s waiting for nothing (last: 0)
>>> wait_until(lambda: [], 0.05, interval=0.01) is None
True
>>> quantile([3.0, 1.0, 2.0, 4.0], 0.5), quantile([3.0, 1.0, 2.0, 4.0], 0.5, nearest=True), quantile([], 0.5)
(2.5, 3.0, None)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from streamproc.settings import Settings

__all__ = ["DEFAULT_LOCAL_BOOTSTRAP", "METRICS_PORTS", "client_settings", "embedded_or_configured", "metrics_port",
           "stop_on_signals", "signals_stop", "wait_until", "poll", "print_json", "print_result", "quantile"]

log = logging.getLogger("reco")
DEFAULT_LOCAL_BOOTSTRAP = "127.0.0.1:9092"
#: ``/metrics`` port of each worker role when ``RECO_METRICS_PORT`` is 0 (serving's is its HTTP port).
METRICS_PORTS = {"streamproc": 9101, "trainer": 9102}
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
S = TypeVar("S", bound=Settings)  # a settings class: core or a role's section
T = TypeVar("T")


# ---------------------------------------------------------------------------------- Kafka
def client_settings(settings: S) -> S:
    """Client commands with no RECO_KAFKA_BOOTSTRAP talk to `reco broker`'s default address."""
    if settings.kafka_bootstrap:
        return settings
    return dataclasses.replace(settings, kafka_bootstrap=DEFAULT_LOCAL_BOOTSTRAP)


@contextlib.contextmanager
def embedded_or_configured(settings: S, *, create: bool = True) -> Iterator[S]:
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
        s = dataclasses.replace(settings, kafka_bootstrap=broker.bootstrap)
        if create:
            create_topics(s)
        yield s


def metrics_port(settings: Settings, role: str) -> int:
    """The port ``role`` serves ``/metrics`` on: ``RECO_METRICS_PORT``, else the role's default."""
    return settings.metrics_port or METRICS_PORTS[role]


# ---------------------------------------------------------------------------------- signals
def _install(stop: threading.Event, note: str | None, logger: logging.Logger) -> dict[int, Any]:
    def handler(signum: int, frame: Any) -> None:
        if note:
            logger.info("signal %s: %s", signum, note)
        stop.set()

    return {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}


def stop_on_signals(note: str | None = None, *, logger: logging.Logger = log) -> threading.Event:
    """An event set on SIGINT or SIGTERM (handlers installed for the rest of the process); ``note``
    is logged with the signal (what the command does now: "finishing in-flight work")."""
    stop = threading.Event()
    _install(stop, note, logger)
    return stop


@contextlib.contextmanager
def signals_stop(note: str | None = None, *, logger: logging.Logger = log) -> Iterator[threading.Event]:
    """:func:`stop_on_signals` for a block: the previous handlers come back on exit."""
    stop = threading.Event()
    prev = _install(stop, note, logger)
    try:
        yield stop
    finally:
        for sig, h in prev.items():
            signal.signal(sig, h)


# ---------------------------------------------------------------------------------- deadlines
def wait_until(fn: Callable[[], T], timeout: float, *, interval: float = 0.2, stop: threading.Event | None = None) -> T | None:
    """Call ``fn`` every ``interval`` seconds until it returns something true, and return that;
    None once ``timeout`` seconds have passed or ``stop`` is set."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
        value = fn()
        if value:
            return value
        time.sleep(interval)
    return None


def poll(fn: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """:func:`wait_until`, but running out of time raises ``TimeoutError`` naming ``what`` and the
    last value ``fn`` returned."""
    last: list[Any] = [None]

    def remembered() -> T:
        last[0] = fn()
        return last[0]

    value = wait_until(remembered, timeout, interval=interval)
    if value is None:
        raise TimeoutError(f"timed out after {timeout} s waiting for {what} (last: {last[0]!r})")
    return value


# ---------------------------------------------------------------------------------- output
def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False, default=str))


def print_result(obj: dict[str, Any], as_json: bool) -> None:
    """A bench's result: one JSON object (``--json``) or ``key: value`` lines."""
    if as_json:
        print_json(obj)
    else:
        for k, v in obj.items():
            print(f"{k}: {v}")


def quantile(values: Sequence[float], q: float, *, nearest: bool = False, scale: float = 1.0, digits: int | None = None) -> float | None:
    """Quantile ``q`` (0..1) of ``values`` times ``scale``, rounded to ``digits``; None when empty.
    Linear interpolation between the two closest ranks (numpy's default), or with ``nearest`` the
    sample at the nearest rank (a value that was measured: the latency benches with few probes)."""
    if not len(values):
        return None
    if nearest:
        xs = sorted(values)
        v = float(xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))])
    else:
        import numpy as np

        v = float(np.quantile(np.asarray(values, dtype=float), q))
    v *= scale
    return v if digits is None else round(v, digits)
