"""Prometheus metrics of the trainer role (``reco_trainer_*``), declared in one place.

Every metric lives on a :class:`TrainerMetrics` built with a ``registry``, so tests use a fresh
:class:`~prometheus_client.CollectorRegistry` and the process uses the default one.

Examples
--------
>>> from prometheus_client import CollectorRegistry
>>> reg = CollectorRegistry()
>>> m = TrainerMetrics(reg)
>>> m.examples_learned.labels(kind="rating").inc(3)
>>> reg.get_sample_value("reco_trainer_examples_learned_total", {"kind": "rating"})
3.0
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["TrainerMetrics"]

# Per-batch learning: a few examples take ~100 µs, a 5000-example batch up to ~1 s.
_LEARN_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Publishing a delta is ~1 ms; a chunked snapshot of a large model can take seconds.
_PUBLISH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Update sizes: a one-row delta is ~1 KB, a snapshot chunk up to max_message_bytes (~1 MB).
_SIZE_BUCKETS = (1e3, 4e3, 16e3, 64e3, 256e3, 512e3, 1e6, 2e6, 4e6, 8e6)


class TrainerMetrics:
    """The trainer's metric catalog (names fixed by the service-wide catalog)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = REGISTRY if registry is None else registry
        self.registry = r
        self.examples_learned = Counter(
            "reco_trainer_examples_learned_total", "Training examples learned, by kind", ["kind"], registry=r)
        self.learn_duration = Histogram(
            "reco_trainer_learn_duration_seconds", "Time to learn one example batch (one examples-topic message)",
            buckets=_LEARN_BUCKETS, registry=r)
        self.replay_buffer = Gauge(
            "reco_trainer_replay_buffer_examples", "Examples held in the replay buffer", registry=r)
        self.prequential_rmse = Gauge(
            "reco_trainer_prequential_rmse", "Prequential (test-then-train) RMSE of ratings", ["window"], registry=r)
        self.prequential_mae = Gauge(
            "reco_trainer_prequential_mae", "Prequential (test-then-train) MAE of ratings", ["window"], registry=r)
        self.prequential_ndcg = Gauge(
            "reco_trainer_prequential_ndcg_at_10", "Prequential NDCG@10 of the next interaction", ["window"], registry=r)
        self.prequential_hit_rate = Gauge(
            "reco_trainer_prequential_hit_rate_at_10", "Prequential hit rate@10 of the next interaction", ["window"], registry=r)
        self.drift_detections = Counter(
            "reco_trainer_drift_detections_total", "Drift detections, by signal (error|rating|sentiment)", ["signal"], registry=r)
        for signal in ("error", "rating", "sentiment"):  # export 0 from the start so increase() sees the first one
            self.drift_detections.labels(signal=signal)
        self.model_version = Gauge(
            "reco_trainer_model_version", "Version of the last model update published", registry=r)
        self.updates_published = Counter(
            "reco_trainer_updates_published_total", "Model-update messages published, by kind (delta|snapshot)", ["kind"], registry=r)
        self.publish_duration = Histogram(
            "reco_trainer_update_publish_duration_seconds", "Time to export, encode and publish one model update (all chunks)",
            buckets=_PUBLISH_BUCKETS, registry=r)
        self.update_size = Histogram(
            "reco_trainer_update_size_bytes", "Size of one model-update message", buckets=_SIZE_BUCKETS, registry=r)
        self.last_checkpoint = Gauge(
            "reco_trainer_last_checkpoint_timestamp_seconds", "Unix time of the last checkpoint written", registry=r)
        self.consumer_lag = Gauge(
            "reco_trainer_consumer_lag_messages", "Examples-topic messages not yet consumed (approximate on Tansu)",
            ["topic", "partition"], registry=r)
        self.rows = Gauge("reco_trainer_rows", "Rows of the model, by table (users|items)", ["table"], registry=r)
        self.active = Gauge("reco_trainer_active", "1 while this trainer owns the examples partition, 0 on standby", registry=r)
        # Added beyond the catalog: undecodable example messages (skipped, never retried in place).
        self.invalid_batches = Counter(
            "reco_trainer_invalid_batches_total", "Examples-topic messages that were not an example batch (skipped)", registry=r)

        # Erasure (DELETE /v1/users|items/{id}, the control topic): see README "Erasure".
        self.erasures = Counter(
            "reco_trainer_erasures_total", "Erasure requests applied from the control topic, by kind (user|item)", ["kind"], registry=r)
        for kind in ("user", "item"):
            self.erasures.labels(kind=kind)
        self.erasure_dropped_examples = Counter(
            "reco_trainer_erasure_dropped_examples_total",
            "Examples dropped because their user or item was erased after the source event was published", registry=r)
        self.invalid_control_records = Counter(
            "reco_trainer_invalid_control_records_total", "Control-topic records refused (sent to the dead-letter topic), by reason",
            ["reason"], registry=r)
        self.recreated_topics = Counter(
            "reco_trainer_recreated_topics_total",
            "Input topics found recreated (new Kafka topic id) on assignment: their checkpointed offsets were dropped", registry=r)

    def set_prequential(self, values: dict[str, float]) -> None:
        """Copy a :meth:`Prequential.get` result onto the ``window=running|recent`` gauges."""
        pairs = ((self.prequential_rmse, "rmse"), (self.prequential_mae, "mae"),
                 (self.prequential_ndcg, "ndcg_at_10"), (self.prequential_hit_rate, "hit_rate_at_10"))
        for gauge, key in pairs:
            for window, suffix in (("running", ""), ("recent", "_recent")):
                v = values.get(key + suffix)
                if v is not None and v == v:  # skip None and NaN
                    gauge.labels(window=window).set(float(v))
