"""Prometheus metrics of the stream workers (``reco_streamproc_*``).

Every metric lives on the :class:`StreamMetrics` object built for one registry, so tests use a
fresh :class:`~prometheus_client.CollectorRegistry` and the process uses the default one.
Labelled children that the hot path touches are bound once here (``consumed_by_type`` …), so the
worker increments them once per batch without a label lookup per event.

Examples
--------
>>> from prometheus_client import CollectorRegistry
>>> reg = CollectorRegistry()
>>> m = StreamMetrics(reg)
>>> m.consumed_by_type["rating"].inc(3)
>>> reg.get_sample_value("reco_streamproc_events_consumed_total", {"type": "rating"})
3.0
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from streamproc.examples import KIND_NAMES
from streamproc.undecodable import REASONS as UNDECODABLE_REASONS

__all__ = ["StreamMetrics", "EVENT_TYPE_LABELS", "LATENCY_BUCKETS"]

EVENT_TYPE_LABELS = ("click", "rating", "comment", "invalid")
ITEM_STATUS_LABELS = ("available", "unavailable", "invalid", "tombstone")
# Publish -> example emitted spans milliseconds (live) to minutes (catching up on a backlog).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0)
ENCODE_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class StreamMetrics:
    """The stream worker's metrics, registered on ``registry`` (default: the process registry)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = REGISTRY if registry is None else registry
        r = self.registry
        self.events_consumed = Counter(
            "reco_streamproc_events_consumed_total", "Events consumed from the events topic, by type", ["type"], registry=r
        )
        self.events_invalid = Counter(
            "reco_streamproc_events_invalid_total", "Events rejected by validation, by reason", ["reason"], registry=r
        )
        self.dead_letters = Counter("reco_streamproc_dead_letters_total", "Messages written to the dead-letter topic", registry=r)
        self.duplicates = Counter(
            "reco_streamproc_duplicates_total", "Events dropped because their event_id was seen in the de-duplication window", registry=r
        )
        self.examples_produced = Counter(
            "reco_streamproc_examples_produced_total", "Training examples produced, by kind", ["kind"], registry=r
        )
        self.encode_batch_size = Histogram(
            "reco_streamproc_encode_batch_size", "Comments per encoder call", buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self.encode_duration = Histogram(
            "reco_streamproc_encode_duration_seconds", "Wall time of one encoder call", buckets=ENCODE_DURATION_BUCKETS, registry=r
        )
        self.stage_latency = Histogram(
            "reco_streamproc_stage_latency_seconds",
            "Kafka publish time of an event -> its training example emitted",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "reco_streamproc_consumer_lag_messages",
            "High watermark minus consumed position, per partition (approximate on Tansu)",
            ["topic", "partition"],
            registry=r,
        )
        self.undecodable_batches = Counter(
            "reco_streamproc_undecodable_batches_total",
            "Record batches of the events topic the Kafka client could not decode (dead-lettered, skipped), by reason",
            ["reason"], registry=r,
        )
        self.undecodable_records = Counter(
            "reco_streamproc_undecodable_records_total",
            "Offsets spanned by the undecodable record batches (events that never reached the model)", registry=r,
        )
        self.items_consumed = Counter(
            "reco_streamproc_items_consumed_total",
            "Item records consumed from the items topic, by status (available, unavailable, invalid, tombstone)",
            ["status"], registry=r,
        )
        for reason in UNDECODABLE_REASONS:  # exported at 0, so the first increase() is seen by the alert
            self.undecodable_batches.labels(reason=reason)
        # Pre-bound children for the hot path.
        self.consumed_by_type = {t: self.events_consumed.labels(type=t) for t in EVENT_TYPE_LABELS}
        self.examples_by_kind = [self.examples_produced.labels(kind=k) for k in KIND_NAMES]
        self.items_consumed_by_status = {st: self.items_consumed.labels(status=st) for st in ITEM_STATUS_LABELS}
        self._invalid_by_reason: dict[str, Counter] = {}

    def invalid(self, reason: str, n: int = 1) -> None:
        """Count ``n`` invalid events with ``reason`` (a bounded label from the validator)."""
        child = self._invalid_by_reason.get(reason)
        if child is None:
            child = self._invalid_by_reason[reason] = self.events_invalid.labels(reason=reason)
        child.inc(n)

    def undecodable(self, reason: str, records: int) -> None:
        """Count one undecodable batch (``reason`` from :data:`streamproc.undecodable.REASONS`)."""
        self.undecodable_batches.labels(reason=reason).inc()
        self.undecodable_records.inc(records)
