"""Record batches a consumer cannot decode, against the real embedded broker (issue 17).

A kafka-python producer with ``compression_type="lz4"`` once crash-looped the stream worker: the
client raised ``UnsupportedCodecError`` on the batch, the supervisor restarted the worker into the
same batch, and every later event of the partition was stuck behind it. Here:

- both client libraries meet an undecodable batch as one marker at the batch's offsets, in order,
  with every record before and after it delivered (nothing lost, nothing repeated);
- a running stream worker meets a corrupt zstd batch and an lz4 batch while it "has no lz4
  library": it stays up, dead-letters each batch with its offsets, and the events after them
  become training examples.

Corrupt batches are made for real: the producer's codec is swapped for one that returns bytes no
decoder accepts, so the broker stores a batch with a valid CRC and an unreadable payload.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from support import poll

from streamproc.examples import ExampleBatch
from streamproc.kafka import client_config, read_all
from streamproc.settings import Settings
from streamproc.topics import Topics
from streamproc.undecodable import undecodable
from streamproc.worker import StreamWorker

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def corrupting(codec: str) -> Iterator[None]:
    """kafka-python producers built meanwhile compress ``codec`` batches into garbage."""
    import kafka.record.default_records as dr

    name = f"{codec}_encode"
    real = getattr(dr, name)
    setattr(dr, name, lambda data, *a, **kw: b"\x00not a " + codec.encode() + b" frame")
    try:
        yield
    finally:
        setattr(dr, name, real)


def send_batch(settings: Settings, topic: str, values: list[bytes], codec: str | None, *, partition: int = 0,
               corrupt: bool = False) -> list[int]:
    """Publish ``values`` as one record batch; returns their offsets."""
    from kafka import KafkaProducer

    producer = KafkaProducer(compression_type=codec, linger_ms=500, batch_size=1 << 20, **client_config(settings))
    try:
        with corrupting(codec) if corrupt else contextlib.nullcontext():
            futures = [producer.send(topic, value=v, key=json.loads(v)["user_id"].encode(), partition=partition)
                       for v in values]
            producer.flush(30)
        return [f.get(10).offset for f in futures]
    finally:
        producer.close()


def events(prefix: str, n: int) -> list[bytes]:
    now = time.time()
    return [json.dumps({"schema_version": 1, "type": "rating", "event_id": f"{prefix}{i}", "user_id": f"u{i % 7}",
                        "item_id": f"i{i % 11}", "event_time": now, "rating": 4.0}).encode() for i in range(n)]


@contextlib.contextmanager
def no_lz4_library(client: str) -> Iterator[None]:
    """``client``'s consumers in this process behave as if the lz4 library were missing (issue
    17's setup); the other client's producers still compress lz4."""
    import aiokafka.codec
    import kafka.codec

    mod = {"aiokafka": aiokafka.codec, "kafka-python": kafka.codec}[client]
    saved = mod.has_lz4
    mod.has_lz4 = lambda: False
    try:
        yield
    finally:
        mod.has_lz4 = saved


def _layout(settings: Settings, topic: str) -> dict[str, list[int]]:
    """Publish good, corrupt, good, lz4 (unreadable here) and good batches; offsets of each."""
    return {
        "good1": send_batch(settings, topic, events("good1-", 5), None),
        "corrupt": send_batch(settings, topic, events("corrupt-", 30), "zstd", corrupt=True),
        "good2": send_batch(settings, topic, events("good2-", 4), "gzip"),
        "lz4": send_batch(settings, topic, events("lz4-", 30), "lz4"),
        "good3": send_batch(settings, topic, events("good3-", 6), "snappy"),
    }


def _check_stream(records: list[Any], layout: dict[str, list[int]]) -> None:
    seen: list[tuple[str, Any]] = []
    for r in records:
        bad = undecodable(r)
        seen.append(("marker", (bad.first_offset, bad.last_offset, bad.reason, bad.codec)) if bad else ("record", r.offset))
    good = [("record", o) for o in layout["good1"]]
    good += [("marker", (layout["corrupt"][0], layout["corrupt"][-1], "corrupt_batch", "zstd"))]
    good += [("record", o) for o in layout["good2"]]
    good += [("marker", (layout["lz4"][0], layout["lz4"][-1], "unsupported_codec", "lz4"))]
    good += [("record", o) for o in layout["good3"]]
    assert seen == good


def test_kafka_python_consumer_moves_past_undecodable_batches(settings: Settings) -> None:
    topic = Topics.from_settings(settings).events
    layout = _layout(settings, topic)
    assert layout["corrupt"] == list(range(layout["corrupt"][0], layout["corrupt"][0] + 30))  # one batch
    with no_lz4_library("kafka-python"):
        records = [r for r in read_all(settings, topic, idle_ms=1500) if r.partition == 0]
    _check_stream(records, layout)


def test_aiokafka_consumer_moves_past_undecodable_batches(settings: Settings) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    topic = Topics.from_settings(settings).events
    layout = _layout(settings, topic)
    total = sum(map(len, layout.values()))

    async def consume() -> list[Any]:
        c = AIOKafkaConsumer(auto_offset_reset="earliest", enable_auto_commit=False, **client_config(settings, aio=True))
        await c.start()
        try:
            c.assign([TopicPartition(topic, 0)])
            out: list[Any] = []
            deadline = time.monotonic() + 30
            # Small max_records: the marker must also come out right when a fetch is drained in parts.
            while time.monotonic() < deadline and (not out or out[-1].offset < layout["good3"][-1]):
                got = await c.getmany(timeout_ms=200, max_records=3)
                out += [r for rs in got.values() for r in rs]
            return out
        finally:
            await c.stop()

    with no_lz4_library("aiokafka"):
        records = asyncio.run(consume())
    assert len(records) == total - 60 + 2
    _check_stream(records, layout)


def fake_encode(texts: list[str]) -> np.ndarray:
    return np.ones((len(texts), 384), np.float32)


def test_stream_worker_dead_letters_undecodable_batches_and_keeps_learning(settings: Settings) -> None:
    topics = Topics.from_settings(settings)
    registry = CollectorRegistry()
    errors: list[BaseException] = []
    stop = threading.Event()
    with no_lz4_library("aiokafka"):  # the worker's consumer; the test's producers are kafka-python
        worker = StreamWorker(settings, registry=registry, encode_fn=fake_encode)

        def run() -> None:
            try:
                worker.run(stop)
            except BaseException as exc:  # noqa: BLE001 - the test asserts there is none
                errors.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            layout = _layout(settings, topics.events)
            expected = {f"{p}{i}" for p, n in (("good1-", 5), ("good2-", 4), ("good3-", 6)) for i in range(n)}

            def learned() -> set[str]:
                return {i for m in read_all(settings, topics.examples, idle_ms=300) for i in ExampleBatch.decode(m.value).event_ids}

            poll(lambda: expected <= learned() and worker.dead_letters_acked >= 2, 60, "examples after the bad batches", 0.2)
            assert thread.is_alive() and not errors, errors
            assert not {i for i in learned() if i.startswith(("corrupt-", "lz4-"))}
        finally:
            stop.set()
            thread.join(60)
    assert not errors, errors
    dead = [dict((k, v.decode()) for k, v in m.headers) for m in read_all(settings, topics.dead_letters, idle_ms=500)]
    batches = sorted((d["source_offset"], d["source_last_offset"], d["codec"], d["message"].split(" ")[0]) for d in dead
                     if d["reason"] == "undecodable_batch")
    assert batches == sorted([
        (str(layout["corrupt"][0]), str(layout["corrupt"][-1]), "zstd", "corrupt_batch"),
        (str(layout["lz4"][0]), str(layout["lz4"][-1]), "lz4", "unsupported_codec"),
    ])
    assert all(d["source_topic"] == topics.events and d["source_partition"] == "0" for d in dead)
    sample = registry.get_sample_value
    assert sample("reco_streamproc_undecodable_batches_total", {"reason": "corrupt_batch"}) == 1
    assert sample("reco_streamproc_undecodable_batches_total", {"reason": "unsupported_codec"}) == 1
    assert sample("reco_streamproc_undecodable_records_total") == 60
    # Committed past the bad batches: a successor worker does not meet them again.
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(group_id=worker.group_id, enable_auto_commit=False, **client_config(settings))
    try:
        assert c.committed(TopicPartition(topics.events, 0)) == layout["good3"][-1] + 1
    finally:
        c.close()
