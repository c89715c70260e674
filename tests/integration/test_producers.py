"""Every real producer works (issue 17), against the whole loop (roles as processes, embedded broker).

- events published by librdkafka (``confluent-kafka``: its defaults, and lz4/zstd/gzip/snappy),
  kafka-python and aiokafka (each codec) are all learned, and the events topic really holds batches
  of every codec;
- a corrupt batch in the middle of a partition is dead-lettered with its offsets, no role
  restarts, the events behind it are learned and their new user gets personal recommendations;
- a librdkafka consumer reads ``reco.recommendations``: the answers to its lz4-compressed requests
  (by correlation id) and a push after its own feedback.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from support import poll

from serving.ops.faults import FaultHarness, loop_settings, metric_sum, scrape, synthetic_events
from serving.ops.loop import running_loop
from streamproc.kafka import client_config, read_all
from streamproc.undecodable import undecodable

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CODECS = ("gzip", "snappy", "lz4", "zstd")


@pytest.fixture(scope="module")
def loop() -> Iterator[tuple[FaultHarness, io.StringIO]]:
    settings, ports, role_env = loop_settings()
    log = io.StringIO()
    with running_loop(settings, log=log, role_env=role_env) as (s, sup):
        h = FaultHarness(s, sup, ports)
        try:
            poll(lambda: h.readyz()[0] in (200, 503), 180, "serving up", 0.3)
            h.publish(synthetic_events(600, prefix="warm", invalid_every=0))
            h.wait_ready()
        except TimeoutError:
            print(log.getvalue()[-5000:])
            raise
        yield h, log
        codes = sup.stop()
    assert all(c == 0 for c in codes.values()), (codes, log.getvalue()[-3000:])


def _events(prefix: str, n: int = 150) -> list[tuple[float, str, bytes]]:
    return synthetic_events(n, prefix=prefix, invalid_every=0, comment_every=0, seed=hash(prefix) % 1000)


def _confluent_conf(h: FaultHarness) -> dict[str, Any]:
    return {"bootstrap.servers": h.settings.kafka_bootstrap}


def publish_confluent(h: FaultHarness, events: list[tuple[float, str, bytes]], **conf: Any) -> None:
    from confluent_kafka import Producer

    p = Producer({**_confluent_conf(h), "linger.ms": 20, **conf})
    errors: list[Any] = []
    for _, user, value in events:
        p.produce(h.topics.events, value=value, key=user.encode(), on_delivery=lambda err, msg: err and errors.append(err))
    assert p.flush(30) == 0
    assert not errors, errors


def publish_kafka_python(h: FaultHarness, events: list[tuple[float, str, bytes]], codec: str | None) -> None:
    from kafka import KafkaProducer

    p = KafkaProducer(compression_type=codec, linger_ms=20, **client_config(h.settings))
    try:
        futures = [p.send(h.topics.events, value=v, key=u.encode()) for _, u, v in events]
        p.flush(30)
        for f in futures:
            f.get(10)
    finally:
        p.close()


def publish_aiokafka(h: FaultHarness, events: list[tuple[float, str, bytes]], codec: str | None) -> None:
    from aiokafka import AIOKafkaProducer

    async def go() -> None:
        p = AIOKafkaProducer(compression_type=codec, linger_ms=20, **client_config(h.settings, aio=True))
        await p.start()
        try:
            futures = [await p.send(h.topics.events, value=v, key=u.encode()) for _, u, v in events]
            await asyncio.gather(*futures)
        finally:
            await p.stop()

    asyncio.run(go())


def _ids(events: list[tuple[float, str, bytes]]) -> set[str]:
    return {json.loads(v)["event_id"] for _, _, v in events}


@contextlib.contextmanager
def blind_reader() -> Iterator[None]:
    """kafka-python consumers in this process read no compressed batch (each becomes a marker)."""
    import kafka.codec

    saved = {c: getattr(kafka.codec, f"has_{c}") for c in CODECS}
    for c in CODECS:
        setattr(kafka.codec, f"has_{c}", lambda: False)
    try:
        yield
    finally:
        for c, f in saved.items():
            setattr(kafka.codec, f"has_{c}", f)


def test_every_client_and_codec_is_learned(loop: tuple[FaultHarness, io.StringIO]) -> None:
    h, log = loop
    expected: set[str] = set()
    plan: list[tuple[str, Any]] = [
        ("confluent-default", lambda ev: publish_confluent(h, ev)),  # librdkafka defaults: acks=all, no compression
        *((f"confluent-{c}", lambda ev, c=c: publish_confluent(h, ev, **{"compression.type": c})) for c in CODECS),
        *((f"kafka-python-{c}", lambda ev, c=c: publish_kafka_python(h, ev, None if c == "none" else c)) for c in ("none", *CODECS)),
        *((f"aiokafka-{c}", lambda ev, c=c: publish_aiokafka(h, ev, None if c == "none" else c)) for c in ("none", *CODECS)),
    ]
    for name, publish in plan:
        events = _events(f"{name}-")
        publish(events)
        expected |= _ids(events)
    with blind_reader():
        codecs_seen = {b.codec for m in read_all(h.settings, h.topics.events, idle_ms=500) if (b := undecodable(m))}
    assert codecs_seen == set(CODECS)  # the producers really compressed, with every codec
    try:
        poll(lambda: expected <= set(h.learned()), 180, "every producer's events learned", 1.0)
    except TimeoutError:
        print(log.getvalue()[-5000:])
        raise
    sp = scrape(f"http://127.0.0.1:{h.ports['streamproc']}/metrics")
    assert metric_sum(sp, "reco_streamproc_undecodable_batches_total") == 0
    assert {r: h.sup.restarts(r) for r in ("streamproc", "trainer", "serve")} == {"streamproc": 0, "trainer": 0, "serve": 0}


def test_corrupt_batch_is_dead_lettered_and_the_events_behind_it_are_learned(loop: tuple[FaultHarness, io.StringIO]) -> None:
    import kafka.record.default_records as dr
    from kafka import KafkaProducer

    h, log = loop
    user = f"fresh-{uuid.uuid4().hex[:6]}"
    now = time.time()

    def ev(eid: str, u: str, item: str) -> bytes:
        return json.dumps({"schema_version": 1, "type": "rating", "event_id": eid, "user_id": u, "item_id": item,
                           "event_time": now, "rating": 5.0}).encode()

    corrupt = [ev(f"corrupt-{n}", user, f"i{n}") for n in range(40)]
    behind = [ev(f"behind-{n}", user, f"i{n}") for n in range(40)]
    p = KafkaProducer(compression_type="lz4", linger_ms=200, batch_size=1 << 20, **client_config(h.settings))
    real = dr.lz4_encode
    dr.lz4_encode = lambda data, *a, **kw: b"\x00not an lz4 frame"
    try:
        bad = [p.send(h.topics.events, value=v, key=user.encode(), partition=0) for v in corrupt]
        p.flush(30)
    finally:
        dr.lz4_encode = real
    good = [p.send(h.topics.events, value=v, key=user.encode(), partition=0) for v in behind]
    p.flush(30)
    bad_offsets = [f.get(10).offset for f in bad]
    [f.get(10) for f in good]
    p.close()
    assert bad_offsets == list(range(bad_offsets[0], bad_offsets[0] + len(corrupt)))  # one batch

    try:
        poll(lambda: {f"behind-{n}" for n in range(40)} <= set(h.learned()), 120, "events behind the corrupt batch learned", 1.0)
    except TimeoutError:
        print(log.getvalue()[-5000:])
        raise
    assert not {i for i in h.learned() if i.startswith("corrupt-")}
    dead = [{k: v.decode() for k, v in m.headers} for m in read_all(h.settings, h.topics.dead_letters, idle_ms=500)]
    assert {"reason": "undecodable_batch", "source_topic": h.topics.events, "source_partition": "0",
            "source_offset": str(bad_offsets[0]), "source_last_offset": str(bad_offsets[-1]), "codec": "lz4"}.items() <= next(
        d for d in dead if d.get("reason") == "undecodable_batch").items()
    assert {r: h.sup.restarts(r) for r in ("streamproc", "trainer", "serve")} == {"streamproc": 0, "trainer": 0, "serve": 0}
    sp = scrape(f"http://127.0.0.1:{h.ports['streamproc']}/metrics")
    assert metric_sum(sp, "reco_streamproc_undecodable_batches_total") == 1
    assert metric_sum(sp, "reco_streamproc_undecodable_records_total") == 40
    # The user whose events sit behind the batch gets recommendations of their own.
    poll(lambda: httpx.get(f"{h.base}/v1/users/{user}/recommendations?k=3", timeout=5).json().get("fallback") is False,
         60, "personal recommendations for the user behind the corrupt batch", 0.5)


def test_confluent_consumer_gets_answers_and_pushes(loop: tuple[FaultHarness, io.StringIO]) -> None:
    from confluent_kafka import Consumer, Producer

    h, _ = loop
    topics = h.topics
    consumer = Consumer({**_confluent_conf(h), "group.id": f"app-{uuid.uuid4().hex[:6]}", "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    consumer.subscribe([topics.recommendations])
    # lz4 and a batch of requests: serving's request consumer reads compressed batches too.
    producer = Producer({**_confluent_conf(h), "compression.type": "lz4", "linger.ms": 50})
    try:
        rid = f"r-{uuid.uuid4().hex[:8]}"
        others = [f"{rid}-{n}" for n in range(30)]
        for r in [*others, rid]:
            producer.produce(topics.requests, key=b"u1", value=json.dumps({"request_id": r, "user_id": "u1", "k": 5}).encode())
        user = f"pusher-{rid}"  # a new user: only this feedback can cause a push for them
        producer.produce(topics.events, key=user.encode(), value=json.dumps({
            "schema_version": 1, "type": "rating", "event_id": f"push-{rid}", "user_id": user, "item_id": "i3",
            "event_time": time.time(), "rating": 4.5}).encode())
        assert producer.flush(30) == 0
        answer: dict[str, Any] = {}
        pushed: dict[str, Any] = {}
        answered: set[str] = set()
        deadline = time.monotonic() + 90
        while not (answer and pushed and answered >= set(others)) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            body = json.loads(msg.value())
            headers = dict(msg.headers() or [])
            answered.add(headers.get("correlation_id", b"").decode())
            if headers.get("correlation_id") == rid.encode():
                answer = body
            elif body.get("reason") == "push" and msg.key() == user.encode():
                pushed = body
        assert answered >= set(others)
        assert answer.get("request_id") == rid and answer.get("reason") == "request", answer
        assert len(answer["items"]) == 5 and answer["user_id"] == "u1"
        assert pushed.get("user_id") == user and "items" in pushed, pushed
    finally:
        consumer.close()


def test_trainer_and_serving_move_past_undecodable_batches_on_their_topics(loop: tuple[FaultHarness, io.StringIO]) -> None:
    import kafka.record.default_records as dr
    from kafka import KafkaProducer

    h, log = loop
    p = KafkaProducer(compression_type="zstd", linger_ms=50, **client_config(h.settings))
    real = dr.zstd_encode
    dr.zstd_encode = lambda data, *a, **kw: b"\x00not a zstd frame"
    try:
        junk = [p.send(topic, value=b"x" * 2000) for topic in (h.topics.examples, h.topics.model_updates)]
        p.flush(30)
    finally:
        dr.zstd_encode = real
        p.close()
    [f.get(10) for f in junk]
    version = h.readyz()[1].get("version") or 0
    events = _events("after-junk-")
    publish_kafka_python(h, events, "zstd")
    try:
        poll(lambda: _ids(events) <= set(h.learned()), 120, "events learned after junk on examples", 1.0)
        # Serving applies versions published after the undecodable batch on model-updates.
        poll(lambda: (h.readyz()[1].get("version") or 0) > version, 60, "serving past the junk on model-updates", 0.5)
    except TimeoutError:
        print(log.getvalue()[-5000:])
        raise
    assert h.readyz()[0] == 200
    assert {r: h.sup.restarts(r) for r in ("streamproc", "trainer", "serve")} == {"streamproc": 0, "trainer": 0, "serve": 0}
    tm = h.trainer_metrics()
    assert (metric_sum(tm, "reco_trainer_invalid_batches_total") or 0) >= 1
