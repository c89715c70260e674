"""``/try`` in a real headless Chromium against the real running loop (embedded broker, streamproc,
trainer and serving as processes, as ``reco demo`` runs them): a user rates an item 1 star, or
writes a negative comment, and the page shows their list change and when the served model
reflected it. Screenshots land in ``artifacts/try-*.png``.

Also: serving answers from the first events, before any model exists (popularity so far,
``"fallback": true``), while ``/readyz`` keeps saying it has no model.
"""

from __future__ import annotations

import io
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import poll  # the one deadline-poll helper (raises TimeoutError)

from serving.ops.loop import running_loop
from serving.settings import ServingSettings
from streamproc.broker import free_port
from streamproc.demo_data import DemoData
from streamproc.replay import replay

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
KEY = "try-test-key"


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _settings() -> tuple[ServingSettings, dict[str, int]]:
    ports = {"http": free_port(), "streamproc": free_port(), "trainer": free_port()}
    s = ServingSettings(http_port=ports["http"], api_key=KEY, topic_prefix=f"try{uuid.uuid4().hex[:6]}.", snapshot_interval_s=5.0,
                 dashboard_sources=f"http://127.0.0.1:{ports['streamproc']}/metrics,http://127.0.0.1:{ports['trainer']}/metrics")
    return s, ports


@pytest.fixture(scope="module")
def demo_loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, DemoData]]:
    """What ``reco demo`` runs: the roles, serving with the demo catalogue and ``--try-writes``."""
    demo = DemoData(users=60, items=80, seed=7)
    catalog = demo.write_catalog(tmp_path_factory.mktemp("try") / "catalog.json")
    settings, ports = _settings()
    log = io.StringIO()
    roles = {"streamproc": ["streamproc"], "trainer": ["trainer"], "serve": ["serve", "--catalog", str(catalog), "--try-writes"]}
    role_env = {"streamproc": {"RECO_METRICS_PORT": str(ports["streamproc"])}, "trainer": {"RECO_METRICS_PORT": str(ports["trainer"])}}
    with running_loop(settings, log=log, roles=roles, role_env=role_env) as (s, sup):
        base = f"http://127.0.0.1:{ports['http']}"
        try:
            poll(lambda: _ok(f"{base}/healthz"), 120, "serving /healthz", 0.3)
            replay(s, list(demo.serialized(2500, rate=500, start=time.time() - 10)), progress=False)
            poll(lambda: _ok(f"{base}/readyz"), 120, "serving /readyz (a model loaded)", 0.3)
            # every demo user known to the model: the page shows personal lists, not the cold-start one
            poll(lambda: all(not httpx.get(f"{base}/v1/users/{u}/recommendations").json()["fallback"] for u in ("u1", "u2")),
                 120, "u1 and u2 known to the model", 0.5)
            _settled(base)
        except (TimeoutError, AssertionError):
            print(log.getvalue()[-6000:])
            raise
        yield base, demo
        codes = sup.stop()
    assert all(c == 0 for c in codes.values()), (codes, log.getvalue()[-3000:])


def _settled(base: str) -> None:
    """Wait until the backlog is learned (the version stops moving for 2 s): afterwards a change
    of the list is the user's own doing."""
    last = {"v": None, "since": time.monotonic()}

    def still() -> bool:
        v = httpx.get(f"{base}/readyz").json()["version"]
        if v != last["v"]:
            last.update(v=v, since=time.monotonic())
        return time.monotonic() - last["since"] > 2.0

    poll(still, 120, "the model version to settle", 0.3)


def _items(driver: Any) -> list[str]:
    return [li.get_attribute("data-item") for li in driver.find_elements("css selector", "#list li")]


def _click(driver: Any, css: str) -> None:
    from selenium.common.exceptions import StaleElementReferenceException

    def go() -> bool:
        try:
            driver.find_element("css selector", css).click()
            return True
        except StaleElementReferenceException:
            return False

    poll(go, 10, f"clicking {css}", 0.1)


def _open(driver: Any, base: str, user: str) -> list[str]:
    driver.get(f"{base}/try#user={user}")
    poll(lambda: driver.find_element("id", "list").get_attribute("data-fallback") == "false" and len(_items(driver)) == 10,
         30, f"{user}'s personal top 10 on the page")
    return _items(driver)


def _visible(driver: Any) -> tuple[float, int, str]:
    v = driver.find_element("id", "visible")
    got = poll(lambda: v.get_attribute("data-latency"), 30, "the 'visible after' figure")
    return float(got), int(v.get_attribute("data-version")), v.text


def test_rating_one_star_changes_the_list_and_says_when(demo_loop: tuple[str, DemoData], browser: Any) -> None:
    base, demo = demo_loop
    driver = browser
    before = _open(driver, base, "u1")
    titles = [li.find_element("css selector", ".title").text for li in driver.find_elements("css selector", "#list li")]
    assert titles[0] == demo.item(before[0]).title  # titles from the catalogue, not ids
    assert demo.item(before[0]).category in driver.find_element("css selector", "#list li .meta").text
    version_before = int(driver.find_element("id", "list").get_attribute("data-version"))

    t0 = time.monotonic()
    _click(driver, f'#list li[data-item="{before[0]}"] button[data-action="rate"][data-rating="1"]')
    latency, version, text = _visible(driver)
    seen_after = time.monotonic() - t0
    after = poll(lambda: (ids := _items(driver)) != before and ids, 10, "the list to change")
    print(f"rating: page showed {text!r} {seen_after:.2f} s after the click")

    assert re.fullmatch(r"visible after \d+\.\d\d s, model v\d+", text), text
    assert version > version_before and 0 < latency < 60
    assert before[0] not in after  # rated (seen) and disliked: out of the top 10
    assert driver.find_element("id", "moved").get_attribute("data-changed") == "true"
    assert "rated 1★" in driver.find_element("id", "action").text
    severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert not severe, severe
    ARTIFACTS.mkdir(exist_ok=True)
    assert driver.save_screenshot(str(ARTIFACTS / "try-rating.png"))


def test_negative_comment_on_a_phone_width_screen(demo_loop: tuple[str, DemoData], browser: Any) -> None:
    base, demo = demo_loop
    driver = browser
    driver.set_window_size(390, 1400)
    before = _open(driver, base, "u2")
    width = driver.execute_script("return document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width} px wide on a 390 px screen"

    t0 = time.monotonic()
    _click(driver, f'#list li[data-item="{before[0]}"] button[data-action="comment"]')
    driver.find_element("id", "comment-text").send_keys("Hated it. Boring, far too long, and the ending made no sense.")
    _click(driver, "#comment-send")
    latency, version, text = _visible(driver)
    seen_after = time.monotonic() - t0
    after = poll(lambda: (ids := _items(driver)) != before and ids, 10, "the list to change")
    print(f"comment: page showed {text!r} {seen_after:.2f} s after sending")

    assert re.fullmatch(r"visible after \d+\.\d\d s, model v\d+", text), text
    assert before[0] not in after
    assert "commented on" in driver.find_element("id", "action").text
    severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert not severe, severe
    ARTIFACTS.mkdir(exist_ok=True)
    driver.execute_script("window.scrollTo(0, 0)")
    assert driver.save_screenshot(str(ARTIFACTS / "try-comment-phone.png"))


def test_a_new_user_starts_from_popular_items_and_gets_a_personal_list(demo_loop: tuple[str, DemoData], browser: Any) -> None:
    base, _ = demo_loop
    driver = browser
    driver.get(f"{base}/try")
    poll(lambda: len(_items(driver)) == 10, 30, "the first demo user's list")
    _click(driver, "#new-user")
    user = poll(lambda: (u := driver.find_element("id", "user").get_attribute("value")).startswith("me-") and u, 10, "a new user id")
    poll(lambda: driver.find_element("id", "for-user").text == user and driver.find_element("id", "list").get_attribute("data-fallback") == "true"
         and len(_items(driver)) == 10, 30, "the new user's popular-items list")
    assert "does not know this user yet" in driver.find_element("id", "model").text
    before = _items(driver)

    _click(driver, f'#list li[data-item="{before[0]}"] button[data-action="rate"][data-rating="5"]')
    _, _, text = _visible(driver)
    poll(lambda: driver.find_element("id", "list").get_attribute("data-fallback") == "false", 10, "a personal list for the new user")
    assert before[0] not in _items(driver)
    assert driver.find_element("id", "model").text.endswith("personal")
    print(f"new user: {text!r}")


def test_answers_from_the_first_events_before_any_model() -> None:
    """Serving alone (no streamproc, no trainer: no model can ever come): once events flow it
    answers popularity so far with ``fallback: true``; /readyz keeps saying ``no_model``."""
    settings, ports = _settings()
    log = io.StringIO()
    with running_loop(settings, log=log, roles={"serve": ["serve"]}) as (s, sup):
        base = f"http://127.0.0.1:{ports['http']}"
        poll(lambda: _ok(f"{base}/healthz"), 120, "serving /healthz", 0.3)
        poll(lambda: httpx.get(f"{base}/readyz").json()["reasons"] == ["no_model"], 60, "serving connected to Kafka", 0.2)
        first = httpx.get(f"{base}/v1/users/newbie/recommendations?k=3")
        assert first.status_code == 503 and first.json()["detail"] == "no_model"  # nothing seen yet
        events = [{"type": "click", "user_id": f"u{n}", "item_id": "hit" if n % 2 else f"i{n % 5}"} for n in range(40)]
        r = httpx.post(f"{base}/v1/events", json=events, headers={"X-API-Key": KEY})
        assert r.status_code == 202, r.text

        def answered() -> Any:
            resp = httpx.get(f"{base}/v1/users/u1/recommendations?k=3")
            return resp.status_code == 200 and resp.json()

        body = poll(answered, 30, "recommendations before any model", 0.1)
        ready = httpx.get(f"{base}/readyz")
        newbie = httpx.get(f"{base}/v1/users/newbie/recommendations?k=3").json()
        codes = sup.stop()
    assert body["fallback"] is True and body["version"] is None
    assert "hit" not in [i["item_id"] for i in body["items"]]  # u1 clicked it: exclude_seen
    assert newbie["items"][0]["item_id"] == "hit"  # the most popular so far
    assert ready.status_code == 503 and ready.json()["reasons"] == ["no_model"]
    assert all(c == 0 for c in codes.values()), (codes, log.getvalue()[-3000:])
