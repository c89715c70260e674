"""The /dashboard sentiment panel in a real headless Chromium, against the real serving app.

uvicorn serves ``create_app`` (no Kafka: model updates are applied to its store, as the update
consumer would); the updates carry the trainer's :class:`~trainer.feedback.ItemFeedback` tensors.
The page must show the falling list and the distribution, and follow a new model version. A
screenshot lands in ``artifacts/dashboard-feedback.png``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from prometheus_client import CollectorRegistry
from support import poll  # the one deadline-poll helper (raises TimeoutError)

from serving.app import create_app
from serving.metrics import ServingMetrics
from serving.settings import ServingSettings
from serving.store import ModelStore
from streamproc.broker import free_port
from trainer.feedback import FEEDBACK_COLUMNS, ItemFeedback
from trainer.updates import ModelUpdate

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
ITEMS = ["espresso-bar", "noodle-house", "taqueria", "bakery", "pizzeria"]
COMMENT = 2


def wait_for(cond: Callable[[], object], timeout: float, what: str) -> object:
    return poll(cond, timeout, what, 0.1)


def comments(fb: ItemFeedback, row: int, sentiment: np.ndarray) -> None:
    n = len(sentiment)
    fb.update(np.full(n, row), np.full(n, COMMENT), np.full(n, np.nan), sentiment)


@pytest.fixture
def serving() -> Iterator[tuple[str, ModelStore]]:
    settings = ServingSettings(dashboard_sources="", topic_prefix="x.")
    registry = CollectorRegistry()
    store = ModelStore(settings, ServingMetrics(registry))
    app = create_app(settings, store, start_kafka=False, registry=registry)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 20, "uvicorn to start")
    yield f"http://127.0.0.1:{port}", store
    server.should_exit = True
    thread.join(timeout=10)


def test_dashboard_shows_falling_items_and_the_sentiment_distribution(serving, browser) -> None:  # type: ignore[no-untyped-def]
    base, store = serving
    driver = browser
    driver.get(base + "/dashboard")

    def fb_value(name: str) -> float | None:
        raw = driver.find_element("id", f"fb-{name}").get_attribute("data-value")
        return float(raw) if raw else None

    def listed() -> list[tuple[str, float]]:
        return [(li.get_attribute("data-item"), float(li.get_attribute("data-trend")))
                for li in driver.find_elements("css selector", "#falling-list li")]

    chart = driver.find_element("id", "chart-sentiment")
    # before the first model: the panel says so instead of breaking
    wait_for(lambda: driver.find_element("id", "falling-list").get_attribute("data-note") == "no model yet", 30, "the first poll")
    assert fb_value("falling") is None and chart.get_attribute("data-items") == "0" and listed() == []

    rng = np.random.default_rng(5)
    fb = ItemFeedback()
    comments(fb, 0, np.r_[rng.normal(4.5, 0.3, 60), rng.normal(1.7, 0.3, 20)])  # espresso-bar turns bad
    comments(fb, 1, rng.normal(3.9, 0.4, 90))  # noodle-house steady
    comments(fb, 2, rng.normal(2.4, 0.4, 30))  # taqueria steadily low
    comments(fb, 3, np.array([4.8, 4.6]))  # bakery: two comments, no trend yet
    n = len(ITEMS)
    base_tensors = {"user_factors": np.ones((1, 2), np.float32), "user_bias": np.zeros(1, np.float32),
                    "item_factors": np.ones((n, 2), np.float32), "item_bias": np.zeros(n, np.float32),
                    "item_popularity": np.ones(n, np.float32)}
    snap = ModelUpdate({"version": 1, "kind": "snapshot", "user_ids": ["u"], "item_ids": ITEMS},
                       {**base_tensors, **fb.export(np.arange(n))})
    assert store.apply(snap.encode()).swapped

    wait_for(lambda: fb_value("falling") == 1, 30, "the falling count")
    wait_for(lambda: listed() and listed()[0][0] == "espresso-bar", 30, "espresso-bar on top of the falling list")
    assert listed()[0][1] < -1.0
    assert fb_value("commented") == 4 and fb_value("trend_min") < -1.0
    assert chart.get_attribute("data-items") == "4"  # four items with comments in the bars
    first = driver.find_element("css selector", "#falling-list li").text
    assert "espresso-bar" in first and "falling" in first and "80 comments" in first

    # the next version: the pizzeria's comments (new) and the noodle house's turn negative
    comments(fb, 1, rng.normal(1.5, 0.3, 25))
    comments(fb, 4, rng.normal(3.0, 0.4, 12))
    delta = ModelUpdate({"version": 2, "kind": "delta", "base_version": 1, "user_ids": [], "item_ids": ["noodle-house", "pizzeria"]},
                        fb.export(np.array([1, 4])))
    assert store.apply(delta.encode()).swapped
    wait_for(lambda: fb_value("falling") == 2, 30, "two items falling after the delta")
    wait_for(lambda: {i for i, _ in listed()} >= {"espresso-bar", "noodle-house"}, 30, "noodle-house listed")
    trends = [t for _, t in listed()]
    assert trends == sorted(trends)  # steepest fall first
    assert chart.get_attribute("data-items") == "5"
    flagged = fb.columns(np.arange(n))[:, FEEDBACK_COLUMNS.index("falling")]
    assert fb_value("falling") == flagged.sum() == 2

    severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert not severe, severe
    driver.execute_script("document.querySelector('[data-panel=sentiment]').scrollIntoView()")
    ARTIFACTS.mkdir(exist_ok=True)
    assert driver.save_screenshot(str(ARTIFACTS / "dashboard-feedback.png"))
