"""Kafka plumbing shared by every role: client config, topic creation, lag.

Client choice by measurement on the embedded broker (2 cores, 150-byte events): aiokafka produces
~70k msg/s against kafka-python's ~17k msg/s, so bulk producers (replay, stream workers) use
aiokafka; kafka-python consumes + parses ~38k msg/s and has the simpler blocking API, so it is
used for admin and the synchronous app-facing publisher.

Every client is built from :func:`client_config`, which also installs the undecodable-batch guard
(:mod:`streamproc.undecodable`): a record batch that a consumer cannot decompress or parse reaches
it as one marker record instead of an error that repeats for ever.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from streamproc.errors import BrokerUnavailable
from streamproc.settings import Settings
from streamproc.topics import Topics
from streamproc.undecodable import install as _install_undecodable_guard

__all__ = ["bootstrap_servers", "create_topics", "client_config", "read_all", "FetchWait", "GROUP_TIMEOUTS"]

log = logging.getLogger(__name__)

# Fast consumer-group joins (default timeouts make joins take ~20 s on Tansu).
GROUP_TIMEOUTS = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


class FetchWait:
    """Lengthens an aiokafka consumer's fetch wait while it is behind and its fetches come back
    empty; back to the short wait once it has caught up.

    A short ``fetch_max_wait_ms`` keeps latency low on a broker that does not answer a long poll
    as soon as data arrives (the embedded Tansu holds an empty fetch ~half the wait). But Tansu
    also answers *empty* when finding the data takes longer than the wait, and its in-memory log
    scans a partition's record batches on each fetch (measured, one partition of one-record
    batches: the newest 100 records took 7 ms at 10,000 batches and 35 ms at 60,000 with a
    500 ms wait; with 20 ms, none came within 10 s). In the 1M-user loop at 2,000 events/s the
    stream worker so stopped for good after ~750,000 events (20 ms wait). On Kafka the wait
    only bounds idle polls, so the long wait costs nothing there.
    """

    def __init__(self, consumer: Any, short_ms: int, *, behind_ms: int = 1000, empty_fetches: int = 2) -> None:
        self.short_ms, self.behind_ms, self.empty_fetches = short_ms, max(behind_ms, short_ms), empty_fetches
        self.raised = 0  # times the wait was lengthened
        self._empty, self._long = 0, False
        self._fetcher = getattr(consumer, "_fetcher", None)
        if self._fetcher is not None and not hasattr(self._fetcher, "_fetch_max_wait_ms"):
            log.warning("this aiokafka has no Fetcher._fetch_max_wait_ms: the fetch wait stays %d ms", short_ms)
            self._fetcher = None

    def after_fetch(self, got_records: bool, behind: int) -> None:
        """Call after each ``getmany``: ``behind`` = high watermarks minus processed positions."""
        if got_records or behind <= 0:
            self._empty = 0
            if self._long and behind < 1000:
                self._set(False)
            return
        self._empty += 1
        if not self._long and self._empty >= self.empty_fetches:
            self._set(True, behind)

    def _set(self, long: bool, behind: int = 0) -> None:
        self._long = long
        if self._fetcher is None:
            return
        self._fetcher._fetch_max_wait_ms = self.behind_ms if long else self.short_ms
        if long:
            self.raised += 1
            log.log(logging.INFO if self.raised == 1 else logging.DEBUG,  # the first time; it may recur at each backlog
                    "%d fetches in a row came back empty %d records behind: fetch wait %d ms until caught up",
                    self._empty, behind, self.behind_ms)


def bootstrap_servers(settings: Settings) -> str:
    if not settings.kafka_bootstrap:
        raise BrokerUnavailable("RECO_KAFKA_BOOTSTRAP is empty: start the embedded broker (`reco broker`) or point it at Kafka")
    return settings.kafka_bootstrap


def client_config(settings: Settings, *, aio: bool = False) -> dict[str, Any]:
    """bootstrap + security settings, for kafka-python (default) or aiokafka clients.

    Also installs the undecodable-batch guard in this process (idempotent), so every consumer
    built from this config moves past a batch it cannot decode (see :mod:`streamproc.undecodable`).
    """
    _install_undecodable_guard()
    cfg = {"bootstrap_servers": bootstrap_servers(settings), **settings.kafka_client_config()}
    if aio and "ssl_cafile" in cfg:
        import ssl

        cfg["ssl_context"] = ssl.create_default_context(cafile=cfg.pop("ssl_cafile"))
    return cfg


def create_topics(settings: Settings, topics: Topics | None = None) -> dict[str, dict[str, Any]]:
    """Create every topic of the plan that does not exist yet (idempotent).

    Returns ``{topic: {"partitions": n, "created": bool}}`` for every planned topic.
    """
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    topics = topics or Topics.from_settings(settings)
    try:
        admin = KafkaAdminClient(request_timeout_ms=10_000, **client_config(settings))
    except Exception as exc:  # noqa: BLE001
        raise BrokerUnavailable(f"Kafka at {settings.kafka_bootstrap} not reachable: {exc}") from exc
    try:
        existing = set(admin.list_topics())
        report: dict[str, dict[str, Any]] = {}
        configs = topics.configs()
        new = [
            NewTopic(name, num_partitions=n, replication_factor=settings.replication_factor, topic_configs=configs.get(name, {}))
            for name, n in topics.plan().items()
            if name not in existing
        ]
        for t in new:
            try:
                admin.create_topics([t])
            except TopicAlreadyExistsError:  # raced with another process
                pass
        described = {d.get("name", d.get("topic")): len(d["partitions"]) for d in admin.describe_topics(list(topics.plan()))}
        created = {t.name for t in new}
        for name, n in topics.plan().items():
            report[name] = {"partitions": described.get(name, n), "created": name in created}
            if name not in created and described.get(name, n) != n:
                log.warning("topic %s exists with %s partitions; the plan says %s", name, described.get(name), n)
        return report
    finally:
        admin.close()


def topic_ids(settings: Settings, topics: list[str], *, timeout_ms: int = 5000) -> dict[str, str]:
    """Kafka's topic id of each of ``topics`` as the cluster has it now ({} when unreadable).

    A topic that was deleted and created again (a memory-only broker that restarted, an operator
    who recreated it) keeps its name and gets a new id; its offsets count from 0 again, so a reader
    that kept its position would skip that many new messages. A client of its own, asked once: a
    long-lived consumer's metadata cache still held the old id at the first rebalance after a broker
    restart (measured). Names the broker reports no id for (brokers before Kafka 2.8) are left out.
    Gives up after ``timeout_ms`` (the callers run it inside a rebalance or a reconnect).
    """
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    try:
        c = KafkaConsumer(enable_auto_commit=False, bootstrap_timeout_ms=timeout_ms, request_timeout_ms=timeout_ms,
                          **client_config(settings))
    except KafkaError as exc:
        log.warning("could not read the topic ids of %s: %s", ", ".join(topics), exc)
        return {}
    try:
        c.topics()  # one metadata request for every topic
        cluster = getattr(c, "_cluster", None)  # kafka-python keeps the ids there (no public getter)
        ids = {t: cluster.topic_id(t) for t in topics} if cluster is not None and hasattr(cluster, "topic_id") else {}
    except KafkaError as exc:
        log.warning("could not read the topic ids of %s: %s", ", ".join(topics), exc)
        return {}
    finally:
        c.close()
    return {t: str(i) for t, i in ids.items() if i is not None}


class TopicIdWatch:
    """One topic's Kafka id, remembered between looks, to tell when the topic was deleted and created
    again: its offsets then start at 0, and a reader that kept its position must start over."""

    def __init__(self, settings: Settings, topic: str, *, timeout_ms: int = 5000) -> None:
        self.settings, self.topic, self.timeout_ms = settings, topic, timeout_ms
        self.id: str | None = None

    def recreated(self) -> bool:
        """Look the id up now: True when it differs from the id seen before (a first look, or one the
        broker does not answer, only records what it can)."""
        now = topic_ids(self.settings, [self.topic], timeout_ms=self.timeout_ms).get(self.topic)
        was, self.id = self.id, now or self.id
        if now is None or was is None or now == was:
            return False
        log.warning("topic %s was recreated (Kafka topic id %s, was %s): reading it from its start", self.topic, now, was)
        return True


def read_all(settings: Settings, topic: str, *, idle_ms: int = 2000, max_s: float = 120.0) -> list[Any]:
    """Read every message of ``topic`` from the beginning (kafka-python, no group).

    Counts by consuming rather than from end offsets: Tansu's high watermark lags the real
    number of records by up to one batch.
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(auto_offset_reset="earliest", consumer_timeout_ms=idle_ms, enable_auto_commit=False, **client_config(settings))
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        out: list[Any] = []
        deadline = time.monotonic() + max_s
        for msg in consumer:
            out.append(msg)
            if time.monotonic() > deadline:
                break
        return out
    finally:
        consumer.close()
