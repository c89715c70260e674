"""Stream worker pieces that need no broker: arguments, group id, metrics, unreachable Kafka."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from streamproc.broker import free_port
from streamproc.errors import BrokerUnavailable
from streamproc.metrics import StreamMetrics
from streamproc.settings import Settings
from streamproc.worker import StreamWorker, group_id


def fake_encode(texts):
    return np.zeros((len(texts), 384), np.float32)


def test_group_id_follows_the_topic_prefix() -> None:
    assert group_id(Settings(topic_prefix="app.")) == "app.streamproc"


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="max_poll_records"):
        StreamWorker(Settings(), registry=CollectorRegistry(), encode_fn=fake_encode, max_poll_records=0)
    with pytest.raises(ValueError, match="commit_interval_s"):
        StreamWorker(Settings(), registry=CollectorRegistry(), encode_fn=fake_encode, commit_interval_s=-1)


def test_metric_names_match_the_catalog() -> None:
    reg = CollectorRegistry()
    m = StreamMetrics(reg)
    m.consumed_by_type["invalid"].inc()
    m.invalid("too_large", 2)
    m.examples_by_kind[2].inc()
    m.consumer_lag.labels(topic="t", partition="0").set(5)
    m.stage_latency.observe(0.01)
    assert reg.get_sample_value("reco_streamproc_events_invalid_total", {"reason": "too_large"}) == 2
    assert reg.get_sample_value("reco_streamproc_examples_produced_total", {"kind": "comment"}) == 1
    assert reg.get_sample_value("reco_streamproc_consumer_lag_messages", {"topic": "t", "partition": "0"}) == 5
    names = {metric.name for metric in reg.collect()}
    assert names == {
        "reco_streamproc_events_consumed", "reco_streamproc_events_invalid", "reco_streamproc_dead_letters",
        "reco_streamproc_duplicates", "reco_streamproc_examples_produced", "reco_streamproc_encode_batch_size",
        "reco_streamproc_encode_duration_seconds", "reco_streamproc_stage_latency_seconds", "reco_streamproc_consumer_lag_messages",
        "reco_streamproc_undecodable_batches", "reco_streamproc_undecodable_records", "reco_streamproc_items_consumed",
    }


def test_unreachable_kafka_is_a_clear_error() -> None:
    w = StreamWorker(Settings(kafka_bootstrap=f"127.0.0.1:{free_port()}"), registry=CollectorRegistry(), encode_fn=fake_encode)
    with pytest.raises(BrokerUnavailable, match="no Kafka broker reachable"):
        w.run()


def test_example_columns_slice_keeps_rows_and_reindexes_embeddings() -> None:
    from streamproc.worker import _Chunk, _Columns

    chunk = _Chunk(tp=None, event_ids=["a", "b", "c"], user_ids=["u"] * 3, item_ids=["i"] * 3, kinds=[0, 2, 2],
                   targets=[1.0, 2.0, 3.0], event_times=[1.0, 2.0, 3.0], published=[1.0, 2.0, 3.0])
    cols = _Columns()
    cols.add(chunk, 0, 3, [(1, np.full(4, 1.0, np.float32)), (2, np.full(4, 2.0, np.float32))], 0.0)
    tail = cols.slice(2, 3)
    assert tail.event_ids == ["c"] and tail.emb_rows == [0] and float(tail.embs[0][0]) == 2.0 and tail.rows == 1
    head = cols.slice(0, 2)
    assert head.emb_rows == [-1, 0] and float(head.embs[0][0]) == 1.0


def test_a_worker_runs_once() -> None:
    from streamproc.errors import RecoError

    w = StreamWorker(Settings(kafka_bootstrap=f"127.0.0.1:{free_port()}"), registry=CollectorRegistry(), encode_fn=fake_encode)
    with pytest.raises(BrokerUnavailable):
        w.run()
    with pytest.raises(RecoError, match="already run"):
        w.run()


def test_fetch_wait_lengthens_while_behind_and_empty_and_shortens_once_caught_up() -> None:
    from types import SimpleNamespace

    from streamproc.kafka import FetchWait

    fetcher = SimpleNamespace(_fetch_max_wait_ms=20)
    w = FetchWait(SimpleNamespace(_fetcher=fetcher), 20, behind_ms=1000)
    for _ in range(10):  # idle: empty fetches with nothing behind keep the short wait
        w.after_fetch(False, 0)
    assert fetcher._fetch_max_wait_ms == 20
    w.after_fetch(False, 35_000)
    assert fetcher._fetch_max_wait_ms == 20  # one empty fetch may just be a fetch in flight
    w.after_fetch(False, 35_000)
    assert fetcher._fetch_max_wait_ms == 1000 and w.raised == 1
    w.after_fetch(True, 30_000)  # records flow again, still far behind: keep the long wait
    assert fetcher._fetch_max_wait_ms == 1000
    w.after_fetch(True, 200)
    assert fetcher._fetch_max_wait_ms == 20
    w.after_fetch(False, 5_000)
    w.after_fetch(True, 5_000)  # records in between: the count of empty fetches starts again
    w.after_fetch(False, 5_000)
    assert fetcher._fetch_max_wait_ms == 20 and w.raised == 1


def test_aiokafka_builds_fetch_requests_from_the_wait_fetch_wait_sets() -> None:
    import inspect

    from aiokafka.consumer.fetcher import Fetcher

    assert "self._fetch_max_wait_ms" in inspect.getsource(Fetcher.__init__)
    assert "self._fetch_max_wait_ms," in inspect.getsource(Fetcher._get_actions_per_node)  # read for each request
