"""``/dashboard`` in a real headless Chromium: the page shows live numbers while the sources move.

A real uvicorn server runs the dashboard routes; a real ``prometheus_client`` HTTP server stands in
for streamproc (the test bumps its counters while the page is open); the trainer source is down.
A screenshot lands in ``artifacts/dashboard.png``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import uvicorn
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from starlette.applications import Starlette
from support import poll  # the one deadline-poll helper (raises TimeoutError)

from serving.dashboard import routes
from serving.settings import ServingSettings
from streamproc.broker import free_port

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


def wait_for(cond: Callable[[], object], timeout: float, what: str) -> object:
    return poll(cond, timeout, what, 0.1)


@pytest.fixture
def fake_streamproc() -> Iterator[tuple[str, CollectorRegistry]]:
    """A real /metrics endpoint standing in for streamproc; the test declares its metrics."""
    reg = CollectorRegistry()
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=reg)
    yield f"http://127.0.0.1:{port}/metrics", reg
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def dashboard_server(fake_streamproc: tuple[str, CollectorRegistry]) -> Iterator[tuple[str, CollectorRegistry]]:
    """uvicorn in a thread serving ``routes(settings, registry)``; trainer's source is down."""
    url, _ = fake_streamproc
    trainer_down = f"http://127.0.0.1:{free_port()}/metrics"
    reg = CollectorRegistry()
    app = Starlette(routes=routes(ServingSettings(dashboard_sources=f"{url},{trainer_down}"), reg))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 20, "uvicorn to start")
    yield f"http://127.0.0.1:{port}", reg
    server.should_exit = True
    thread.join(timeout=10)


def test_dashboard_shows_live_numbers(fake_streamproc, dashboard_server, browser) -> None:  # type: ignore[no-untyped-def]
    _, streamproc_reg = fake_streamproc
    base, serving_reg = dashboard_server
    driver = browser
    driver.get(base + "/dashboard")
    body = driver.find_element("tag name", "body")

    def value(key: str) -> float | None:
        raw = driver.find_element("id", f"val-{key}").get_attribute("data-value")
        return float(raw) if raw else None

    # sources answer but expose nothing yet (roles still starting): the page says so, not breaking
    wait_for(lambda: len(driver.find_elements("css selector", "#sources li")) == 3, 30, "the first scrape")
    assert body.get_attribute("data-state") == "nodata"
    assert driver.find_element("id", "status").text.startswith("no data yet")
    assert driver.find_element("id", "val-events_per_s").text == "—" and value("events_per_s") is None
    assert driver.find_element("id", "chart-events").get_attribute("data-points") == "0"

    consumed = Counter("reco_streamproc_events_consumed_total", "Events consumed", ["type"], registry=streamproc_reg)
    dead = Counter("reco_streamproc_dead_letters_total", "Dead letters", registry=streamproc_reg)
    feedback = Histogram("reco_serving_feedback_latency_seconds", "Feedback latency", registry=serving_reg,
                         buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
    version = Gauge("reco_serving_model_version", "Model version", registry=serving_reg)

    stop = threading.Event()

    def feed() -> None:  # a moving "streamproc" and serving process while the page is open
        n = 0
        while not stop.is_set():
            n += 1
            consumed.labels("click").inc(30)
            consumed.labels("rating").inc(10 + n % 7)
            consumed.labels("comment").inc(2)
            if n % 5 == 0:
                consumed.labels("invalid").inc()
                dead.inc()
            feedback.observe(0.2 + (n % 10) * 0.05)
            version.set(n // 10)
            stop.wait(0.05)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        first = wait_for(lambda: (v := value("events_per_s")) and v > 0 and v, 30, "events/s readout > 0")
        wait_for(lambda: (v := value("events_per_s")) and v != first, 30, "events/s readout to change")
        wait_for(lambda: value("feedback_latency_p99_s"), 30, "feedback latency p99 readout")
        wait_for(lambda: int(driver.find_element("id", "chart-events").get_attribute("data-points")) > 4,
                 30, "the events chart to draw several points")
    finally:
        stop.set()
        feeder.join(timeout=5)

    assert body.get_attribute("data-state") == "live"
    assert value("events_per_s_click") > 0
    assert 0.1 <= value("feedback_latency_p50_s") <= 1.0  # observed 0.2 … 0.65 s
    assert value("model_version") is not None
    assert value("rmse_recent") is None  # no trainer: "—", not a crash
    assert driver.find_element("id", "val-rmse_recent").text == "—"
    sources = {li.get_attribute("data-source"): li.get_attribute("data-up")
               for li in driver.find_elements("css selector", "#sources li")}
    # names are host:port off the default role ports: serving + fake streamproc up, "trainer" down
    assert sources.pop("serving") == "true", sources
    assert sorted(sources.values()) == ["false", "true"], sources
    severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert not severe, severe

    ARTIFACTS.mkdir(exist_ok=True)
    assert driver.save_screenshot(str(ARTIFACTS / "dashboard.png"))
