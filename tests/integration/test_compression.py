"""Compressed batches through the stream worker, and our own producers' codec (RECO_COMPRESSION)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest

from serving.settings import ServingSettings
from streamproc.bench.ingest import CODECS, codec_pass
from streamproc.examples import ExampleBatch
from streamproc.kafka import read_all
from streamproc.topics import Topics
from streamproc.undecodable import undecodable

pytestmark = pytest.mark.integration


def fake_encode(texts: list[str]) -> np.ndarray:
    return np.ones((len(texts), 384), np.float32)


def _events(n: int) -> list[tuple[float, str, bytes]]:
    from streamproc.bench.ingest import _bench_events

    return _bench_events(n, 0, 0)[0]


@pytest.mark.parametrize("codec", CODECS)
def test_events_in_every_codec_become_examples(settings: ServingSettings, codec: str) -> None:
    events = _events(3000)
    res = codec_pass(settings, events, codec, timeout=60, encode_fn=fake_encode)
    assert res["undecodable_batches"] == 0
    assert res["examples"] == res["accounted"] == len(events)


@contextlib.contextmanager
def kafka_python_without(codec: str) -> Iterator[None]:
    import kafka.codec

    name = f"has_{codec}"
    saved = getattr(kafka.codec, name)
    setattr(kafka.codec, name, lambda: False)
    try:
        yield
    finally:
        setattr(kafka.codec, name, saved)


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_stream_worker_compresses_examples_with_the_setting(settings: ServingSettings, codec: str) -> None:
    s = dataclasses.replace(settings, compression=codec)
    events = _events(2000)
    res = codec_pass(s, events, "none", timeout=60, encode_fn=fake_encode)
    assert res["examples"] == len(events)
    examples_topic = Topics.from_settings(dataclasses.replace(s, topic_prefix=f"{s.topic_prefix}none.")).examples
    messages = read_all(s, examples_topic, idle_ms=500)
    assert sum(len(ExampleBatch.decode(m.value)) for m in messages) == len(events)
    # A reader without the codec's library meets only undecodable batches of that codec: the
    # examples were compressed with it.
    with kafka_python_without(codec):
        blind = read_all(s, examples_topic, idle_ms=500)
    markers = [undecodable(m) for m in blind]
    assert markers and all(b is not None and b.codec == codec for b in markers)


def test_trainer_producer_uses_the_setting(settings: ServingSettings) -> None:
    from prometheus_client import CollectorRegistry

    from trainer.worker import TrainerWorker

    for codec, expected in (("zstd", "zstd"), ("none", None)):
        w = TrainerWorker(dataclasses.replace(settings, compression=codec), registry=CollectorRegistry())
        w.open()
        try:
            assert w._producer.config["compression_type"] == expected
        finally:
            w.close()


def test_bench_updates_reports_bytes_and_times_per_codec(settings: ServingSettings, tmp_path) -> None:
    from trainer.bench.updates import run_bench

    out = run_bench(settings, ratings=str(tmp_path / "none.csv"), limit=3000, deltas=2, codecs=("none", "zstd"))
    assert out["source"] == "synthetic"
    none, zstd = out["codecs"]["none"], out["codecs"]["zstd"]
    assert none["snapshot_chunks"] >= 1 and none["snapshot_bytes_raw"] == none["snapshot_bytes_stored"] > 0
    assert zstd["snapshot_bytes_stored"] < zstd["snapshot_bytes_raw"]
    assert zstd["snapshot_size_ratio"] < 1.0
    assert all(r["snapshot_publish_ms"] > 0 and r["delta_bytes_raw_mean"] for r in (none, zstd))
