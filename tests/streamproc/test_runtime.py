"""The run-time helpers every command shares (streamproc/runtime.py): signals → stop, deadline
polling, metrics ports, quantiles."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from streamproc.runtime import METRICS_PORTS, metrics_port, poll, quantile, signals_stop, wait_until
from streamproc.settings import Settings


def test_sigterm_sets_the_stop_event_and_the_old_handler_comes_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with signals_stop() as stop:
        assert not stop.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(2.0)
    assert signal.getsignal(signal.SIGTERM) is before


def test_wait_until_returns_the_first_true_value_or_none() -> None:
    calls = iter([0, [], "ready", "later"])
    assert wait_until(lambda: next(calls), 1.0, interval=0.001) == "ready"
    stop = threading.Event()
    stop.set()
    assert wait_until(lambda: pytest.fail("not called once stopped"), 5.0, stop=stop) is None


def test_poll_names_what_it_waited_for_and_the_last_value() -> None:
    seen: list[int] = []

    def empty_batch() -> list[int]:
        seen.append(1)
        return []

    with pytest.raises(TimeoutError, match=r"after 0.05 s waiting for the moon \(last: \[\]\)"):
        poll(empty_batch, 0.05, "the moon", interval=0.01)
    assert len(seen) >= 2  # polled, not called once


def test_metrics_port_is_the_setting_else_the_roles_default() -> None:
    assert metrics_port(Settings(), "trainer") == METRICS_PORTS["trainer"] == 9102
    assert metrics_port(Settings(metrics_port=9300), "streamproc") == 9300


def test_quantile_interpolates_or_takes_the_nearest_rank() -> None:
    xs = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert quantile(xs, 0.5) == 3.0 and quantile(xs, 0.9) == pytest.approx(4.6)
    assert quantile(xs, 0.9, nearest=True) == 5.0 and quantile(xs, 0.1, nearest=True) == 1.0
    assert quantile(xs, 0.99, scale=1000, digits=1) == 4960.0
    assert quantile([], 0.5) is None
