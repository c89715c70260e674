"""Reliability of the whole loop (roles as supervised processes on the embedded broker):

- poison bytes (binary junk, invalid UTF-8, deep nesting, NaN, a 900 KB message) mixed into the
  events topic all reach the dead-letter topic, no role crashes, the valid events behind them are
  learned;
- ``kill -9`` of the trainer, a streamproc worker and a serving replica at (seeded) random points
  under a 1,200 events/s replay: each is restarted and recovers, no event is lost (every published id is
  learned or dead-lettered), duplicates stay inside the documented bounds;
- a 10 s broker outage (own broker, restarted on the same port): serving keeps answering with the
  last model, ``/readyz`` is 503 with a reason and back to 200, new events are learned afterwards.

The harness is :class:`serving.ops.faults.FaultHarness` (also behind ``reco bench faults``).
"""

from __future__ import annotations

import io
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import poll

from serving.ops.faults import FaultHarness, loop_settings, metric_sum, poison_messages, scrape, synthetic_events
from serving.ops.loop import running_loop

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROLES = ("streamproc", "trainer", "serve")


@pytest.fixture(scope="module")
def loop() -> Iterator[tuple[FaultHarness, io.StringIO]]:
    settings, ports, role_env = loop_settings()
    log = io.StringIO()
    with running_loop(settings, log=log, role_env=role_env) as (s, sup):
        h = FaultHarness(s, sup, ports)
        try:
            poll(lambda: h.readyz()[0] in (200, 503), 180, "serving up", 0.3)
            h.publish(synthetic_events(2000, prefix="warm"))
            h.wait_ready()
        except TimeoutError:
            print(log.getvalue()[-5000:])
            raise
        yield h, log
        codes = sup.stop()
    assert all(c == 0 for c in codes.values()), (codes, log.getvalue()[-3000:])


def test_poison_bytes_are_dead_lettered_and_nothing_crashes(loop: tuple[FaultHarness, io.StringIO]) -> None:
    h, log = loop
    poison = poison_messages(12, big=900_000)
    assert max(map(len, poison)) > 900_000
    h.publish_raw(poison)
    h.publish(synthetic_events(600, prefix="behind"))  # valid events queued behind the poison
    try:
        h.wait_accounted(90)
    except TimeoutError:
        print(log.getvalue()[-5000:])
        raise
    dead = h.dead_letters()
    assert {f"poison:{n}" for n in range(12)} <= set(dead)
    assert {f"behind{n}" for n in range(600) if n % 97 != 96} <= set(h.learned())
    assert {r: h.sup.restarts(r) for r in ROLES} == {r: 0 for r in ROLES}, log.getvalue()[-3000:]
    sp = scrape(f"http://127.0.0.1:{h.ports['streamproc']}/metrics")
    assert (metric_sum(sp, "reco_streamproc_dead_letters_total") or 0) >= 12


def test_kill_9_each_role_under_load_loses_nothing(loop: tuple[FaultHarness, io.StringIO]) -> None:
    h, log = loop
    rng = random.Random(15)  # seeded: a failure reruns with the same kill points
    h.start_load(synthetic_events(200_000, prefix="load"), rate=1200)
    try:
        for role in ("trainer", "streamproc", "serve"):
            time.sleep(rng.uniform(0.5, 3.0))  # a random point under load
            h.kill(role)
        # how fast the replay went is not asserted here (a loaded CI machine is slower): throughput
        # is `reco bench faults` / `reco bench ingest`, which print numbers
        h.stop_load()
        h.wait_accounted(150)
        poll(lambda: h.readyz()[1].get("version") == h.trainer_version(), 60, "serving at the trainer's version")
    except TimeoutError:
        print(log.getvalue()[-6000:])
        raise
    acct = h.account()
    print({k.role: k.recovery_s for k in h.kills}, acct)
    assert acct["events_lost"] == 0, acct
    assert acct["outside_bounds"] == [], acct
    assert acct["relearned_by_trainer"] <= acct["trainer_relearn_bound"]
    assert {r: h.sup.restarts(r) for r in ROLES} == {r: 1 for r in ROLES}  # each killed once, nothing else crashed


def publish_items(settings: Any, prefix: str, n: int) -> None:
    from streamproc.publisher import ItemPublisher

    with ItemPublisher(settings) as pub:
        for j in range(n):
            pub.item(item_id=f"{prefix}-{j}", title=f"{prefix} {j}", categories=["Drama"])


def send_request(settings: Any, request_id: str, user: str) -> None:
    from kafka import KafkaProducer

    from streamproc.kafka import client_config
    from streamproc.topics import Topics

    p = KafkaProducer(**client_config(settings))
    p.send(Topics.from_settings(settings).requests, key=user.encode(),
           value=json.dumps({"request_id": request_id, "user_id": user, "k": 5}).encode())
    p.flush()
    p.close()


def test_broker_outage_keeps_serving_and_recovers(tmp_path: Path) -> None:
    """Stop the (memory-only) broker for 10 s, restart it on the same port, recreate the topics
    (the test does it, like an operator's ``reco topics create``): serving answers with its last
    model throughout, ``/readyz`` goes 503 ``kafka_unreachable`` (metric
    ``reco_serving_kafka_connected`` 0) and back to 200, and events published after the restart
    are learned and become visible; item records published after it reach the stream workers and
    serving's catalogue, and a recommendation request sent over Kafka is answered there."""
    from streamproc.broker import EmbeddedBroker
    from streamproc.kafka import create_topics

    broker = EmbeddedBroker().start()
    try:
        settings, ports, role_env = loop_settings(kafka_bootstrap=broker.bootstrap, checkpoint_dir=str(tmp_path / "ck"))
        create_topics(settings)
        log = io.StringIO()
        with running_loop(settings, log=log, role_env=role_env) as (s, sup):
            h = FaultHarness(s, sup, ports)
            try:
                poll(lambda: h.readyz()[0] in (200, 503), 180, "serving up", 0.3)
                h.publish(synthetic_events(1500, prefix="pre"))
                h.wait_ready()
                sp_metrics = f"http://127.0.0.1:{ports['streamproc']}/metrics"
                publish_items(s, "pre-item", 40)  # catalogue positions well past where the recreated topic starts
                for j in range(40):  # and request positions
                    send_request(s, f"pre-{j}", f"u{j}")
                poll(lambda: scrape(f"{h.base}/metrics").get("reco_serving_catalog_items") == 40, 60, "40 catalogue items", 0.5)
                url = f"{h.base}/v1/users/u1/recommendations"
                version = httpx.get(url).json()["version"]
                from trainer.checkpoint import CheckpointStore

                examples_key = f"{h.topics.examples}:0"

                def examples_offset() -> tuple[int, str] | None:
                    """The latest checkpoint's examples offset and the topic id it was taken on."""
                    c = CheckpointStore(s.checkpoint_dir).latest()
                    return (c.offsets[examples_key], c.info["topic_ids"][h.topics.examples]) if c and examples_key in c.offsets else None

                resume, old_id = poll(examples_offset, 60, "a checkpoint with an examples offset", 0.5)
                broker.stop()
                code, body = poll(lambda: (r := h.readyz())[0] == 503 and r, 60, "/readyz 503 while the broker is down")
                assert "kafka_unreachable" in body["reasons"]
                assert scrape(f"{h.base}/metrics").get("reco_serving_kafka_connected") == 0
                down_until = time.monotonic() + 10
                while time.monotonic() < down_until:  # the outage: serving keeps answering with its last model
                    r = httpx.get(url, timeout=5)
                    assert r.status_code == 200 and r.json()["version"] >= version and r.json()["items"]
                    time.sleep(0.5)
                broker.start()
                create_topics(s)  # memory-only storage: the topics are gone
                poll(lambda: h.readyz()[0] == 200, 120, "/readyz 200 after the broker is back", 0.5)
                assert scrape(f"{h.base}/metrics").get("reco_serving_kafka_connected") == 1
                # Events after the restart: every role picks up the recreated topics. The trainer sees
                # the examples topic's new Kafka topic id and reads it from its start: its checkpointed
                # offset belonged to the old topic and would skip that many new example messages. A
                # checkpoint written during the outage may hold a later position of the old topic; one
                # written after the trainer rejoined holds none, or one of the new topic.
                if (late := examples_offset()) and late[1] == old_id:
                    resume = late[0]
                user = "after-outage"
                post = [(t, u, v.replace(b'"user_id": "' + u.encode() + b'"', b'"user_id": "after-outage"') if n % 2 else v)
                        for n, (t, u, v) in enumerate(synthetic_events(3000, prefix="post", invalid_every=0, comment_every=0))]
                h.publish(post, rate=1000)
                publish_items(s, "post-item", 12)
                poll(lambda: not httpx.get(f"{h.base}/v1/users/{user}/recommendations").json().get("fallback", True),
                     120, "the post-outage user's own recommendations", 0.5)
                poll(lambda: h.trainer_metrics().get("reco_trainer_recreated_topics_total", 0) >= 1, 60,
                     "the trainer to rejoin and find the examples topic recreated", 0.5)
                from streamproc.examples import ExampleBatch
                from streamproc.kafka import read_all

                # The stream workers too read the recreated events topic from its start: every event
                # published after the restart becomes an example (some twice: those read at the old
                # positions before the group rejoined), and the trainer learns every one of them.
                post_ids = {json.loads(v)["event_id"] for _, _, v in post}
                sizes: list[int] = []

                def split() -> tuple[set[str], set[str]] | None:
                    before, after = set(), set()
                    for m in read_all(s, h.topics.examples, idle_ms=500):
                        (before if m.offset < resume else after).update(set(ExampleBatch.decode(m.value).event_ids) & post_ids)
                    sizes.append(len(before | after))
                    return (before, after) if len(sizes) > 2 and sizes[-1] == sizes[-3] == len(post) else None

                before, after = poll(split, 90, f"all {len(post)} post-outage events to become examples", 2.0)
                poll(lambda: (before | after) <= set(h.learned()), 60, "every post-outage example learned", 1.0)
                assert before, f"no example message below the old offset {resume}: the check above proves nothing"
                # the item records sent after the restart reach serving's catalogue and the stream workers
                poll(lambda: scrape(f"{h.base}/metrics").get("reco_serving_catalog_items") == 52, 60,
                     "the 12 post-outage items in serving's catalogue", 0.5)
                poll(lambda: metric_sum(scrape(sp_metrics), "reco_streamproc_items_consumed_total") == 52, 60,
                     "the stream workers to read the 12 post-outage items", 0.5)
                # and a recommendation request sent over Kafka after the restart is answered there
                send_request(s, "after-outage-request", user)
                poll(lambda: any(json.loads(m.value).get("request_id") == "after-outage-request"
                                 for m in read_all(s, h.topics.recommendations, idle_ms=300)), 60, "the Kafka reply", 0.5)
                print(f"broker outage: all {len(post)} post-restart events became examples and were learned "
                      f"({len(before)} at offsets below the old checkpoint's {resume})")
                assert {r: sup.restarts(r) for r in ROLES} == {r: 0 for r in ROLES}
            except (TimeoutError, AssertionError):
                print(log.getvalue()[-8000:])
                raise
    finally:
        broker.stop()
