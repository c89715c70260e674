"""What every ``reco`` command shares at run time, whatever its package.

- where Kafka is: :func:`client_settings` (a client command with no ``RECO_KAFKA_BOOTSTRAP`` talks
  to ``reco broker``'s default address) and :func:`embedded_or_configured` (the configured cluster,
  or an embedded broker started for the run);
- signals → stop: :func:`stop_on_signals` / :func:`signals_stop` turn SIGINT and SIGTERM into a
  :class:`threading.Event` the command's loop waits on;
- deadline polling: :func:`poll` (until a condition holds, or ``TimeoutError`` naming it);
- output: :func:`print_json`, :func:`print_result` (a bench prints one JSON object).

Examples
--------
>>> poll(lambda: 42, 1.0, "the answer")
42
>>> poll(lambda: 0, 0.05, "nothing", interval=0.01)
Traceback (most recent call last):
...
TimeoutError: timed out after 0.05 s waiting for nothing (last: 0)
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from streamproc.settings import Settings

__all__ = ["DEFAULT_LOCAL_BOOTSTRAP", "client_settings", "embedded_or_configured", "stop_on_signals", "signals_stop",
           "poll", "print_json", "print_result"]

log = logging.getLogger("reco")
DEFAULT_LOCAL_BOOTSTRAP = "127.0.0.1:9092"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
T = TypeVar("T")


# ---------------------------------------------------------------------------------- Kafka
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
def poll(fn: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """Call ``fn`` every ``interval`` seconds until it returns something true, and return that;
    after ``timeout`` seconds raise ``TimeoutError`` naming ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


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
