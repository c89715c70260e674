"""Prometheus metrics of the serving role (one place, one ``registry`` parameter).

Examples
--------
>>> from prometheus_client import CollectorRegistry
>>> m = ServingMetrics(CollectorRegistry())
>>> m.fallbacks.inc()
>>> m.registry.get_sample_value("reco_serving_fallbacks_total")
1.0
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ServingMetrics", "FEEDBACK_LATENCY_BUCKETS", "REQUEST_BUCKETS"]

# Feedback latency spans milliseconds (hot path) to minutes (a stalled trainer).
FEEDBACK_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# Requests: sub-millisecond top-k up to a second.
REQUEST_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
SWAP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServingMetrics:
    """Every ``reco_serving_*`` metric, registered on ``registry``.

    Parameters
    ----------
    registry
        Where the metrics are registered; tests pass a fresh ``CollectorRegistry``.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter("reco_serving_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.request_duration = Histogram(
            "reco_serving_request_duration_seconds", "HTTP request latency by route", ["route"], buckets=REQUEST_BUCKETS, registry=r
        )
        self.model_version = Gauge("reco_serving_model_version", "Version of the model being served", registry=r)
        self.swaps = Counter("reco_serving_model_swaps", "Model versions swapped in", registry=r)
        self.swap_duration = Histogram(
            "reco_serving_swap_duration_seconds", "Time to build the next model from an update (off the request path)", buckets=SWAP_BUCKETS, registry=r
        )
        self.updates_rejected = Counter("reco_serving_updates_rejected", "Model updates rejected, by reason", ["reason"], registry=r)
        self.feedback_latency = Histogram(
            "reco_serving_feedback_latency_seconds",
            "Kafka publish time of a feedback event to the model that learned from it being served",
            buckets=FEEDBACK_LATENCY_BUCKETS,
            registry=r,
        )
        self.fallbacks = Counter("reco_serving_fallbacks", "Recommendations answered by the popularity fallback", registry=r)
        self.snapshots_published = Counter("reco_serving_snapshots_published", "Snapshots this replica published on model-snapshots "
                                           "(RECO_PUBLISH_SNAPSHOTS_S)", registry=r)
        self.push_messages = Counter("reco_serving_push_messages", "Refreshed top-k pushed after feedback", registry=r)
        self.push_backlog = Gauge("reco_serving_push_backlog_users", "Users whose refreshed top-k is due or waiting to be pushed "
                                  "(grows while pushing is held to RECO_PUSH_MAX_CPU_SHARE)", registry=r)
        # Extra label (bounded): status = ok | invalid | error.
        self.kafka_requests = Counter("reco_serving_kafka_requests", "Recommendation requests read from Kafka, by status", ["status"], registry=r)
        self.ready = Gauge("reco_serving_ready", "1 when a model is loaded and Kafka is reachable", registry=r)
        self.kafka_connected = Gauge("reco_serving_kafka_connected", "1 while the Kafka clients are connected", registry=r)
        # Feedback analysis (serving.feedback.FeedbackView.bind): read from the served model when scraped; no per-item labels.
        self.items_commented = Gauge("reco_serving_items_commented", "Items in the served model with at least one comment sentiment estimate", registry=r)
        self.items_sentiment_falling = Gauge("reco_serving_items_sentiment_falling", "Items whose comment sentiment is flagged falling", registry=r)
        self.items_sentiment_trend_min = Gauge("reco_serving_items_sentiment_trend_min",
                                               "Most negative item sentiment trend (recent minus slow mean, rating points)", registry=r)
        # cumulative like histogram buckets (le = 1, 1.5, ..., 5, +Inf): histogram_quantile() applies
        self.items_by_sentiment = Gauge("reco_serving_items_by_sentiment", "Items whose mean comment sentiment is <= le", ["le"], registry=r)
        self.erasure_requests = Counter("reco_serving_erasure_requests", "Erasure requests accepted (DELETE /v1/users|items/{id}), by kind",
                                        ["kind"], registry=r)
        # The live catalogue (serving.catalog) and the request-time rules.
        self.catalog_items = Gauge("reco_serving_catalog_items", "Items in the live catalogue (items topic + --catalog file)", registry=r)
        self.catalog_unavailable = Gauge(
            "reco_serving_catalog_unavailable_items", "Catalogue items marked unavailable (never recommended)", registry=r)
        # Extra label (bounded): rule = category | exclude.
        self.filtered_requests = Counter(
            "reco_serving_filtered_requests", "Recommendation requests (HTTP and Kafka) with a request-time rule, by rule", ["rule"], registry=r)
        self._filtered = {rule: self.filtered_requests.labels(rule) for rule in ("category", "exclude")}

    def count_filtered(self, rules: Any) -> None:
        """Count one request with rules (:class:`serving.catalog.Rules`)."""
        if rules.categories:
            self._filtered["category"].inc()
        if rules.exclude:
            self._filtered["exclude"].inc()
