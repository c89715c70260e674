"""The trainer role: examples in, online learning, versioned model updates out, checkpoints.

One active trainer per model. The examples topic has one partition and every trainer joins the
consumer group ``{topic_prefix}trainer``: the member that gets the partition is active
(``reco_trainer_active`` 1), any other member waits as standby (0) and takes over when the active
one leaves or dies (after the group session timeout, 6 s). On every assignment the trainer loads the
newest checkpoint and seeks the partition to the checkpoint's offsets: the checkpoint, not Kafka's
committed offsets, says where learning resumes (see :mod:`trainer.checkpoint` for the guarantee).

Model updates (:class:`trainer.updates.ModelUpdate`, the contract in :mod:`trainer.updates`):

* a **delta** (rows touched since the previous update) on the model-updates topic as soon as
  ``update_interval_ms`` has passed since the previous one, or after ``update_max_examples``
  examples, carrying ``published`` = ``[[user_id, item_id, published_s], ...]`` for every example
  it covers; a delta larger than ``max_message_bytes`` is sent as several consecutive deltas (each
  its own version);
* a **snapshot** (all rows, chunked by rows to fit ``max_message_bytes``, every chunk the same
  version) on the model-snapshots topic right after the first examples or a restore, then every
  ``snapshot_interval_s``, or longer where a snapshot's cost on the training thread calls for it
  (:meth:`TrainerWorker.snapshot_wait_s`); none of these periodic ones while a serving replica
  publishes them (``RECO_PUBLISH_SNAPSHOTS_S``, :class:`serving.kafka_io.SnapshotPublisher`) and
  the newest is younger than a third of the update topics' retention. Its header's
  ``deltas_from`` is the model-updates offset where the deltas that follow it start. While the
  trainer's rows are the ones its deltas delivered ("in sync"), a snapshot takes the version of
  the last delta (replicas that follow the deltas already hold it and never need it); after a
  restore or a refused update it takes the next version, so the following deltas make every
  replica that followed the old ones see a gap and reload.
  The rows are copied on the training thread (``export(full=True)``); the users' candidates are
  computed there too, in slices of at most 50 ms per loop turn (:meth:`TrainerWorker.advance_snapshot`);
  chunking, encoding, compression and sending happen on a background thread with its own
  producer, one snapshot at a time (``last_snapshot`` holds the stall, candidate and send times).

Versions only move forward, also across restarts and take-overs: on assignment the trainer reads
the tails of the model-updates and model-snapshots topics and continues after the highest version
found there.

Erasure: the active trainer also reads the control topic (:mod:`streamproc.control`, one
partition, its offset kept in the checkpoint like the examples offset). An erasure record drops
the id's rows (``model.forget``), its entries in the pending delta and in the learned-id log, and
is followed at once by a delta that lists the id as expired (every replica drops it) and a checkpoint
(the only one kept); the next snapshot (at the latest 30 s after the previous one) follows: none
of them holds the id. A bounded
map of salted hashes of erased ids to the erasure time (the control record's Kafka timestamp;
``erasure_tombstones`` entries, checkpointed) drops examples whose source event was published at
or before the erasure, however late they arrive; later events start a fresh profile.

Examples
--------
>>> from trainer.settings import TrainerSettings
>>> w = TrainerWorker(TrainerSettings(kafka_bootstrap="127.0.0.1:1", checkpoint_dir="/tmp/reco-doctest-ckpt"))
>>> w.group_id, w.active
('reco.trainer', False)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from streamproc.control import ControlRecord, InvalidControl
from streamproc.errors import InvalidUpdate, RecoError
from streamproc.examples import KIND_ITEM, KIND_NAMES, ExampleBatch, InvalidExampleBatch
from streamproc.kafka import GROUP_TIMEOUTS, client_config, topic_ids
from streamproc.topics import Topics
from trainer.checkpoint import Checkpoint, CheckpointError, CheckpointStore
from trainer.metrics import TrainerMetrics
from trainer.scoring import RankWeights
from trainer.settings import TrainerSettings
from trainer.updates import UpdateHeader, chunk_update, peek

__all__ = ["TrainerWorker"]

log = logging.getLogger(__name__)

POLL_TIMEOUT_MS = 50  # the consume loop never blocks longer than this while idle (freshness)
MAX_POLL_RECORDS = 8  # example batches per poll: keeps the loop (and publishing) responsive
_LAG_EVERY_S = 1.0
SETTLE_MIN_S, SETTLE_MAX_S = 1.2, 15.0  # before leaving the group: see _settle_group
_REPUBLISH_PAUSE_S = 1.0  # after the broker refused a model update
# A snapshot's candidates (the co-occurrence walk, ~0.25 ms per user) are computed on the training
# thread between batches, at most this long per loop turn (longer when the turn brought no records),
# in steps of _CANDIDATE_STEP users. On a thread of its own the walk (numba, holding the GIL) made
# learning wait behind it at every GIL hand-over: the longest learn step rose to 2.5 s at 100k users.
_CANDIDATE_STEP = 128
_CANDIDATE_SLICE_S, _CANDIDATE_IDLE_SLICE_S = 0.05, 0.1
# A turn that found records waiting gives the candidates at most this share of its learning time (a
# trainer behind its stream stays behind less long): 50 ms a turn left the 1M-user loop ~2 s behind
# for the minute a snapshot's candidates took.
_CANDIDATE_SHARE = 0.25
_ERASURE_FLUSH_MIN_S = 0.25  # erasures arriving closer together share one delta + checkpoint
# After an erasure the next snapshot comes on the regular schedule, but at the latest this long after
# the previous one. Not at once: every replica rebuilds from a snapshot, and extra snapshots during a
# burst of erasures made the erasures themselves slow (bench erasure --preload 80000: p99 3.8-5.2 s
# with a snapshot 5 s apart, 0.8 s without); the expiring delta removes the id from replicas at once.
_ERASURE_SNAPSHOT_MIN_S = 30.0
# The next snapshot waits at least this many times the training-thread time the previous one took
# (its rows' copy and its users' candidates: 5.4 s at 1M users x 100k items in reco bench scale), so
# snapshots take at most ~1/30 of the trainer whatever the model's size (at 10x they took 14 % of it
# in the 1M-user loop at 2,000 events/s, and sent the broker a 585 MB snapshot every minute); but
# never longer than a third of the update topics' retention, so a new replica always finds a
# snapshot and every delta after it.
_SNAPSHOT_COST_FACTOR = 30.0
# ... and at least this many times the time its sending thread took (chunk, encode, hand to the
# producer, which compresses): 40 s for the 706 MB of a 1M-user snapshot in the loop at 2,000 events/s,
# when every probe of those seconds waited 2-6 s (0.3-0.6 s otherwise).
_SNAPSHOT_SEND_FACTOR = 5.0
# Likewise a checkpoint (written on the training thread: 3.5 s at 1M users) waits at least this many
# times the previous one's write time; every 10 s at 1M users they took a third of the trainer. A
# crash then re-learns a little more from the examples topic.
_CHECKPOINT_COST_FACTOR = 20.0
_CONTROL_POLL_RECORDS = 500
# Examples published up to this long after the erasure record are dropped too: the record's Kafka
# timestamp is taken before the DELETE is acknowledged, and producers' clocks differ a little.
ERASURE_SLACK_S = 1.0


def _default_classes() -> tuple[Any, Any, Any]:
    from trainer.drift import DriftMonitor
    from trainer.model import HybridMF
    from trainer.prequential import Prequential

    return HybridMF, Prequential, DriftMonitor


class TrainerWorker:
    """The trainer role, usable in-process: ``TrainerWorker(settings).run(stop_event)``.

    Parameters
    ----------
    settings
        Service settings (Kafka, topics, trainer and checkpoint settings).
    registry
        Prometheus registry for the metrics (default: the process-wide one).
    classes
        ``(model_cls, prequential_cls, drift_cls)``; default ``HybridMF, Prequential, DriftMonitor``.
        Tests inject small fakes with the same interface.
    """

    def __init__(self, settings: TrainerSettings, *, registry: Any = None, classes: tuple[Any, Any, Any] | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.classes = classes
        self.metrics = TrainerMetrics(registry)
        self.topics = Topics.from_settings(settings)
        self.group_id = f"{settings.topic_prefix}trainer"
        self.store = CheckpointStore(settings.checkpoint_dir)
        self.active = False
        self.version = 0  # last version published (or restored)
        self.examples_learned = 0
        self.assignments = 0  # completed group joins (an empty assignment counts: standby)
        self.model: Any = None
        self.prequential: Any = None
        self.drift: Any = None
        self.last_checkpoint: Checkpoint | None = None
        self._offsets: dict[str, int] = {}
        self._topic_ids: dict[str, str] = {}  # topic -> Kafka topic id the offsets above belong to (checkpointed)
        self._consumer: Any = None
        self._producer: Any = None
        self._snap_producer: Any = None  # snapshots: their own connection, so a delta never waits behind one
        self._snap_thread: threading.Thread | None = None
        self._snap_watch: Any = None  # reads model-snapshots' newest message (see _snapshot_elsewhere)
        self._snap_job: dict[str, Any] | None = None  # a snapshot whose candidates are being computed
        self.last_snapshot: dict[str, Any] = {}  # stall_s (training thread), send_s, messages, bytes, version
        self._in_sync = False  # the rows equal what the deltas published so far delivered (see the module doc)
        self._updates_end: int | None = None  # next offset of the model-updates topic (deltas_from of a snapshot)
        self._fatal: BaseException | None = None
        self._lock = threading.RLock()  # the poll loop vs. rebalance callbacks (kafka-python I/O thread)
        self._commit_due = False
        self._stopping = False
        self._mem_seq: int | None = None  # checkpoint seq the in-memory state equals (skip reloads)
        self._pending_event_time: float = 0.0
        self._pending_newest_published: float = 0.0
        self._reset_pending()
        self._reset_ids()
        self._control: Any = None  # assign()-mode consumer of the control topic (active trainer only)
        self._control_seek = False
        self._salt = b""  # key of the salted id hashes (tombstones, learned-id log tags); checkpointed
        self._tombs: dict[str, float] = {}  # tag of an erased id -> erasure time (Unix s), oldest first
        self._tomb_max = 0.0
        self._erase_tags: set[str] = set()  # erased since the last checkpoint: their id-log lines go
        self._erasure_flush = False
        self._last_erasure_flush = 0.0
        self.erasures_applied = 0
        self._learned_at_ckpt = 0
        self._newest_event_time = 0.0
        self._newest_published = 0.0
        self._last_delta = 0.0
        self._last_snapshot = 0.0
        self._elsewhere = False  # the newest snapshot is a serving replica's (see _snapshot_elsewhere)
        self._need_snapshot = False
        self._snapshot_not_before = 0.0  # after a refused update: pause before the snapshot that repairs it
        self._last_ckpt = time.monotonic()
        self._ckpt_write_s = 0.0  # the last checkpoint's write time (see _CHECKPOINT_COST_FACTOR)
        self._poll_s = 0.0  # the last poll's wait (see _candidate_slice_s)
        self._last_lag = 0.0
        self.metrics.active.set(0)

    # ------------------------------------------------------------------ lifecycle
    def run(self, stop_event: threading.Event | None = None) -> int:
        """Consume, learn and publish until ``stop_event`` is set; then finish cleanly
        (final delta, checkpoint, leave the group). Returns 0."""
        stop = stop_event or threading.Event()
        self.open()
        try:
            while not stop.is_set():
                self.step()
            with self._lock:
                self._stopping = True
                self._deactivate("shutdown")
            self._settle_group()
        finally:
            self.close()
        return 0

    def open(self) -> None:
        from kafka import ConsumerRebalanceListener, KafkaProducer

        cfg = client_config(self.settings)
        worker = self

        class _Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: Any) -> None:
                worker._guard(worker._on_revoked, revoked)

            def on_partitions_assigned(self, assigned: Any) -> None:
                worker._guard(worker._on_assigned, assigned)

        self._producer = KafkaProducer(
            linger_ms=0, acks=1, enable_idempotence=False, max_request_size=max(2 * self.settings.max_message_bytes, 1_048_576),
            compression_type=self.settings.compression_type, **cfg)  # RECO_COMPRESSION: zstd halves snapshots (README)
        self._snap_producer = KafkaProducer(
            linger_ms=5, acks=1, enable_idempotence=False, max_request_size=max(2 * self.settings.max_message_bytes, 1_048_576),
            compression_type=self.settings.compression_type, **cfg)
        self._listener = _Listener()
        self._open_consumer()
        if self.topics.control:
            from kafka import KafkaConsumer

            self._control = KafkaConsumer(enable_auto_commit=False, auto_offset_reset="earliest",
                                          fetch_max_wait_ms=POLL_TIMEOUT_MS, **client_config(self.settings))

    def _open_consumer(self) -> None:
        from kafka import KafkaConsumer

        self._consumer = KafkaConsumer(
            group_id=self.group_id, enable_auto_commit=False, auto_offset_reset="earliest",
            max_poll_records=MAX_POLL_RECORDS, fetch_max_wait_ms=POLL_TIMEOUT_MS, **GROUP_TIMEOUTS,
            **client_config(self.settings))
        self._consumer.subscribe([self.topics.examples], listener=self._listener)
        log.info("trainer joined group %s on %s (standby until assigned)", self.group_id, self.topics.examples)

    def _settle_group(self) -> None:
        """Before leaving the group, let any rebalance in progress complete (records are ignored).

        Tansu elects a member that leaves during a rebalance as the group's leader anyway and the
        group then never completes a join: a standby that started joining just before this trainer
        stopped (a rolling update) would wait for ever. Leaving from a stable group hands the
        partition over at once. Polls for at least one heartbeat interval to learn of a rebalance.
        """
        coordinator = getattr(self._consumer, "_coordinator", None)
        if coordinator is None or not hasattr(coordinator, "stable"):
            return
        start = time.monotonic()
        while time.monotonic() - start < SETTLE_MAX_S:
            settled = coordinator.stable() and not coordinator.need_rejoin()
            if settled and time.monotonic() - start >= SETTLE_MIN_S:
                return
            self._consumer.poll(timeout_ms=100)
        log.warning("leaving group %s while a rebalance is still in progress", self.group_id)

    def close(self) -> None:
        self._drop_snapshot_job("closing")
        if self._snap_thread is not None:
            self._snap_thread.join(120)  # a snapshot in flight is finished, not cut
            self._snap_thread = None
        for attr, what, kwargs in (("_snap_watch", "model-snapshots reader", {"autocommit": False}),
                                   ("_snap_producer", "snapshot producer", {"timeout": 10}),
                                   ("_control", "control consumer", {"autocommit": False}),
                                   ("_consumer", "consumer", {"autocommit": False})):  # the consumer's LeaveGroup: a standby takes over at once
            client = getattr(self, attr)
            if client is not None:
                try:
                    client.close(**kwargs)
                except Exception as exc:  # noqa: BLE001 - closing is best effort
                    log.warning("closing the %s: %s", what, exc)
                setattr(self, attr, None)
        if self._producer is not None:
            try:
                self._producer.flush(10)
                self._producer.close(10)
            except Exception as exc:  # noqa: BLE001
                log.warning("closing the producer: %s", exc)
            self._producer = None
        self.metrics.active.set(0)

    def _guard(self, fn: Callable[[Any], None], arg: Any) -> None:
        # kafka-python logs and swallows listener exceptions; keep them and fail the loop instead
        try:
            with self._lock:
                fn(arg)
        except BaseException as exc:  # noqa: BLE001
            log.exception("rebalance handling failed")
            self._fatal = exc

    # ------------------------------------------------------------------ one loop turn
    def step(self) -> None:
        """Poll once (≤ 50 ms when idle), learn what came, publish/checkpoint what is due."""
        t = time.perf_counter()
        records = self._consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
        self._poll_s = time.perf_counter() - t
        if self._fatal is not None:
            raise RecoError(f"trainer cannot continue: {self._fatal}") from self._fatal
        with self._lock:  # kafka-python runs rebalance callbacks on its I/O thread
            if self.active:
                self._poll_control()
                self._learn_and_publish(records)
        if self._commit_due:
            self._commit_due = False
            self._commit_hint()

    def _learn_and_publish(self, records: dict[Any, list[Any]]) -> None:
        t0 = time.perf_counter()
        if self._erasure_flush and time.monotonic() - self._last_erasure_flush >= _ERASURE_FLUSH_MIN_S:
            self.flush_erasures()
        for tp, msgs in records.items():
            for msg in msgs:
                self._learn_message(tp, msg)
                if self._delta_due():
                    self.publish_delta()
        if self._delta_due():
            self.publish_delta()
        self.advance_snapshot(self._candidate_slice_s(time.perf_counter() - t0) if records else _CANDIDATE_IDLE_SLICE_S)
        if (self._need_snapshot and time.monotonic() >= self._snapshot_not_before) or (
                (self.examples_learned or self._mem_seq is not None) and self._snapshot_due() and not self._snapshot_elsewhere()):
            self.publish_snapshot()
        now = time.monotonic()
        if self._checkpoint_due():
            self.checkpoint()
        if now - self._last_lag >= _LAG_EVERY_S:
            self._update_lag()

    def _candidate_slice_s(self, work_s: float) -> float:
        """This turn's time for a snapshot's candidates: what the poll waited for records (time
        the trainer had to spare), else :data:`_CANDIDATE_SHARE` of the turn's learning, at most
        :data:`_CANDIDATE_SLICE_S`."""
        return min(_CANDIDATE_SLICE_S, max(self._poll_s, _CANDIDATE_SHARE * work_s))

    # ------------------------------------------------------------------ learning
    def _learn_message(self, tp: Any, msg: Any) -> None:
        key = f"{tp.topic}:{tp.partition}"
        expected = self._offsets.get(key)
        if expected is not None and msg.offset < expected:  # already learned (a fetch that raced a seek)
            return
        if expected is not None and msg.offset > expected:
            log.warning("examples %s: offset jumped from %d to %d", key, expected, msg.offset)
        try:
            batch = ExampleBatch.decode(msg.value)
        except InvalidExampleBatch as exc:
            self.metrics.invalid_batches.inc()
            log.warning("skipping examples message %s@%d: %s", key, msg.offset, exc)
            self._offsets[key] = msg.offset + 1
            return
        self.learn(batch)
        self._offsets[key] = msg.offset + 1

    def learn(self, batch: ExampleBatch) -> np.ndarray:
        """Test-then-train one batch: predictions, prequential metrics, drift, pending update."""
        if self.model is None:
            self._fresh_components()
        if self._tombs and len(batch):
            batch = self._drop_erased(batch)
        n = len(batch)
        if n == 0:
            return np.zeros(0, np.float32)
        t0 = time.perf_counter()
        preds = self.model.learn_batch(batch)
        self.metrics.learn_duration.observe(time.perf_counter() - t0)
        ranks = getattr(self.model, "last_ranks", None)  # full-catalogue ranks of a sample (HybridMF)
        if ranks is not None and len(ranks) == n:
            self.prequential.update_batch(batch, preds, ranks)
        else:
            self.prequential.update_batch(batch, preds)
        for signal in self.drift.update_batch(batch, preds) or ():
            self._on_drift(signal)
        rec = batch.records
        for kind, count in enumerate(np.bincount(rec["kind"], minlength=len(KIND_NAMES))[: len(KIND_NAMES)]):
            if count:
                self.metrics.examples_learned.labels(kind=KIND_NAMES[kind]).inc(int(count))
        self.examples_learned += n
        self._ids_since_ckpt.extend(batch.event_ids)
        self._ids_users.extend(batch.user_ids)
        self._ids_items.extend(batch.item_ids)
        pub = rec["published"]
        feedback = rec["kind"] != KIND_ITEM  # catalogue content has no user whose answers it changes: no freshness sample
        if feedback.all():
            self._pending_users.extend(batch.user_ids)
            self._pending_items.extend(batch.item_ids)
            self._pending_published.extend(pub.tolist())
        else:
            keep = np.flatnonzero(feedback).tolist()
            self._pending_users.extend(batch.user_ids[k] for k in keep)
            self._pending_items.extend(batch.item_ids[k] for k in keep)
            self._pending_published.extend(pub[feedback].tolist())
        self._pending_event_time = max(self._pending_event_time, float(rec["event_time"].max()))
        self._pending_newest_published = max(self._pending_newest_published, float(pub.max()))
        self._newest_event_time = max(self._newest_event_time, self._pending_event_time)
        self._newest_published = max(self._newest_published, self._pending_newest_published)
        self.metrics.set_prequential(self.prequential.get())
        self._update_model_gauges()
        return preds

    def _on_drift(self, signal: dict[str, Any]) -> None:
        name = str(signal.get("signal", "error"))
        self.metrics.drift_detections.labels(signal=name).inc()
        log.warning("drift detected: signal=%s index=%s evidence=%s", name, signal.get("index"),
                    json.dumps(signal.get("evidence"), default=str))
        self.model.on_drift()  # trainer.protocols.OnlineModel

    def _update_model_gauges(self) -> None:
        replay = getattr(self.model, "replay", None)  # a model with a replay buffer (HybridMF) shows its size
        if replay is not None:
            self.metrics.replay_buffer.set(len(replay))
        for table in ("users", "items"):
            n = getattr(self.model, f"n_{table}", None)
            if n is not None and not callable(n):
                self.metrics.rows.labels(table=table).set(int(n))

    # ------------------------------------------------------------------ publishing
    def _reset_pending(self) -> None:
        self._pending_users: list[str] = []
        self._pending_items: list[str] = []
        self._pending_published: list[float] = []
        self._pending_event_time = 0.0
        self._pending_newest_published = 0.0

    def _delta_due(self) -> bool:
        n = len(self._pending_published)
        if not n:
            return False
        return n >= self.settings.update_max_examples or (time.monotonic() - self._last_delta) * 1000 >= self.settings.update_interval_ms

    def _checkpoint_due(self) -> bool:
        wait = max(self.settings.checkpoint_interval_s, _CHECKPOINT_COST_FACTOR * self._ckpt_write_s)
        return time.monotonic() - self._last_ckpt >= wait

    def _snapshot_due(self) -> bool:
        wait = self.topics.update_retention_ms / 3000.0 if self._elsewhere else self.snapshot_wait_s()
        return time.monotonic() - self._last_snapshot >= wait

    def _snapshot_elsewhere(self) -> bool:
        """Whether the newest message on model-snapshots belongs to a snapshot a serving replica
        published (``RECO_PUBLISH_SNAPSHOTS_S``; being sent counts) less than a third of the update
        topics' retention ago. Then this periodic snapshot is skipped and the next look comes when
        that one is that old: a new replica always finds a snapshot whose deltas are still kept."""
        h = self._newest_snapshot_header()
        if h is None or h.extra.get("publisher") != "serving":
            self._elsewhere = False
            return False
        age = max(0.0, time.time() - h.created)
        if age >= self.topics.update_retention_ms / 3000.0:
            self._elsewhere = False
            return False
        if not self._elsewhere:
            log.info("snapshot v%d from a serving replica on %s (%.0f s old): this trainer publishes none while they keep coming",
                     h.version, self.topics.model_snapshots, age)
        self._elsewhere = True
        self._last_snapshot = time.monotonic() - age
        return True

    def _newest_snapshot_header(self) -> UpdateHeader | None:
        """The header of the last message on model-snapshots (None: empty, unreadable, or Kafka out of reach)."""
        from kafka import KafkaConsumer, TopicPartition

        tp = TopicPartition(self.topics.model_snapshots, 0)
        try:
            if self._snap_watch is None:
                fetch = max(4 * self.settings.max_message_bytes, 8 << 20)
                self._snap_watch = KafkaConsumer(enable_auto_commit=False, fetch_max_wait_ms=100, max_partition_fetch_bytes=fetch,
                                                 fetch_max_bytes=fetch, **client_config(self.settings))
                self._snap_watch.assign([tp])
            c = self._snap_watch
            end = c.end_offsets([tp]).get(tp, 0) or 0
            if not end:
                return None
            c.seek(tp, end - 1)
            last = None
            for _ in range(3):  # Tansu's reported end can lag by a batch: what follows it is newer
                for msgs in c.poll(timeout_ms=200).values():
                    last = msgs[-1] if msgs else last
                if last is not None and c.position(tp) >= end:
                    break
            return None if last is None else peek(last.value)
        except Exception as exc:  # noqa: BLE001 - then this trainer publishes its own
            log.warning("model-snapshots: newest snapshot not read (%r)", exc)
            return None

    def snapshot_wait_s(self) -> float:
        """Seconds from one snapshot's start to the next: ``snapshot_interval_s``, or
        :data:`_SNAPSHOT_COST_FACTOR` x the previous snapshot's training-thread time or
        :data:`_SNAPSHOT_SEND_FACTOR` x its sending thread's time where longer, at most a third of
        the update topics' retention."""
        cost = self.last_snapshot.get("stall_s", 0.0) + self.last_snapshot.get("candidates_s", 0.0)
        sending = _SNAPSHOT_SEND_FACTOR * self.last_snapshot.get("send_s", 0.0)
        cap = self.topics.update_retention_ms / 3000.0
        return max(self.settings.snapshot_interval_s, min(max(_SNAPSHOT_COST_FACTOR * cost, sending), cap))

    def publish_delta(self) -> int:
        """Publish the rows touched since the previous update; returns messages sent. While not in
        sync (after a restore or a refused update) a snapshot goes first instead (it holds them)."""
        if self.model is None:
            return 0
        if not self._in_sync:
            return self.publish_snapshot() if time.monotonic() >= self._snapshot_not_before else 0
        t0 = time.perf_counter()
        head, tensors = self.model.export(full=False)
        published = list(zip(self._pending_users, self._pending_items, self._pending_published, strict=True))
        if not published and not any(head.get(k) for k in ("user_ids", "item_ids", "expired_user_ids", "expired_item_ids")):
            return 0
        header = self._header(head, "delta", self.version + 1, base=self.version, published=published,
                              newest_event_time=self._pending_event_time or self._newest_event_time,
                              newest_published=self._pending_newest_published or self._newest_published)
        parts = chunk_update(header, tensors, self.settings.max_message_bytes, candidate_space=head.get("candidate_item_ids"))
        futures = []
        for u in parts:
            data = u.encode()
            self._check_size(u.header, len(data))
            futures.append(self._producer.send(self.topics.model_updates, value=data))
            self.version = u.header.version
            self.metrics.update_size.observe(len(data))
            self.metrics.updates_published.labels(kind="delta").inc()
        self._producer.flush()
        from kafka.errors import KafkaError

        try:
            for f in futures:
                md = f.get(timeout=30)  # raise if the broker refused one
                self._updates_end = int(md.offset) + 1  # not max(): a recreated topic starts again at 0
        except KafkaError as exc:
            # e.g. a broker that came back with the topic recreated refuses the batch: replicas would
            # see a gap, so the next turn publishes a full snapshot (after a pause), the trainer stays up
            log.warning("model update v%d (delta) not accepted by the broker: %r; a full snapshot follows", self.version, exc)
            self._refused()
        self.metrics.model_version.set(self.version)
        self._reset_pending()
        self._last_delta = time.monotonic()
        self.metrics.publish_duration.observe(time.perf_counter() - t0)
        return len(parts)

    def publish_snapshot(self, *, wait: bool = False) -> int:
        """Publish every row to the model-snapshots topic (after any pending delta). The rows are
        copied here; the users' candidates follow in slices (:meth:`advance_snapshot`, each loop
        turn), then a background thread chunks, encodes, compresses and sends. ``wait``: do all of it
        now and join. Returns the messages sent (``wait``) or 1 when a snapshot was started, 0 when
        none was (no model, or the previous snapshot is still under way)."""
        if self.model is None:
            return 0
        if self._snap_job is not None or (self._snap_thread is not None and self._snap_thread.is_alive()):
            return 0  # one at a time; still due, so a turn after it ends starts the next one
        if self._in_sync and self._pending_published:
            self.publish_delta()
        t0 = time.perf_counter()
        head, tensors = self.model.export(full=True, candidates=False)  # candidates: advance_snapshot
        candidates = head.pop("candidates", None)
        version = self.version if self._in_sync and self.version > 0 else self.version + 1
        header = self._header(head, "snapshot", version, base=None, published=[], newest_event_time=self._newest_event_time,
                              newest_published=self._newest_published, deltas_from=self._updates_end or 0)
        stall = time.perf_counter() - t0
        self.version = version
        self._in_sync = True
        self._reset_pending()  # a snapshot after a restore holds what pending deltas held
        self.metrics.model_version.set(version)
        self.metrics.rows.labels(table="users").set(len(header.user_ids))
        self.metrics.rows.labels(table="items").set(len(header.item_ids))
        self._need_snapshot = False
        self._elsewhere = False
        self._last_snapshot = time.monotonic()
        self.last_snapshot = {"version": version, "stall_s": round(stall, 4), "users": len(header.user_ids),
                              "items": len(header.item_ids), "candidates_s": 0.0, "candidate_slice_max_s": 0.0}
        self._snap_job = {"header": header, "tensors": tensors, "space": head.get("candidate_item_ids"), "t0": t0,
                          "candidates": candidates, "steps": [], "next": 0, "out": {}}
        if wait:
            out = self._snap_job["out"]
            self.advance_snapshot(None)
            if self._snap_thread is not None:
                self._snap_thread.join()
            return int(out.get("sent", 0))
        self.advance_snapshot(_CANDIDATE_SLICE_S)
        return 1

    def advance_snapshot(self, budget_s: float | None = _CANDIDATE_SLICE_S) -> None:
        """Compute the next users' candidates of the snapshot under way, for at most ``budget_s``
        (None: all); when every user's are done, start the thread that sends it."""
        job = self._snap_job
        if job is None:
            return
        t = time.perf_counter()
        header, fn, steps = job["header"], job["candidates"], job["steps"]
        n = len(header.user_ids)
        if fn is not None:
            if not steps:
                steps.append(fn(slice(0, 0)))  # the shapes, also for a model without users
            while job["next"] < n:
                steps.append(fn(slice(job["next"], job["next"] + _CANDIDATE_STEP)))
                job["next"] += _CANDIDATE_STEP
                if budget_s is not None and time.perf_counter() - t >= budget_s:
                    break
        spent = time.perf_counter() - t
        self.last_snapshot["candidates_s"] = round(self.last_snapshot.get("candidates_s", 0.0) + spent, 3)
        self.last_snapshot["candidate_slice_max_s"] = round(max(self.last_snapshot.get("candidate_slice_max_s", 0.0), spent), 4)
        if fn is not None and job["next"] < n:
            return
        self._snap_job = None
        tensors = job["tensors"]
        if fn is not None:
            tensors = {**tensors, "user_candidates": np.concatenate([r for r, _ in steps]),
                       "user_candidate_scores": np.concatenate([v for _, v in steps])}
        out = job["out"]

        def send() -> None:
            out["sent"] = self._send_snapshot(header, tensors, job["space"], job["t0"])

        self._snap_thread = threading.Thread(target=send, name=f"snapshot-v{header.version}", daemon=True)
        self._snap_thread.start()

    def _drop_snapshot_job(self, why: str) -> None:
        if self._snap_job is not None:
            log.info("snapshot v%d abandoned before it was sent (%s)", self._snap_job["header"].version, why)
            self._snap_job = None
            self._need_snapshot = True

    def _send_snapshot(self, header: UpdateHeader, tensors: dict[str, np.ndarray], space: Any, t0: float) -> int:
        """Background thread: chunk, encode and send one snapshot; a failure schedules the next."""
        from kafka.errors import KafkaError

        t1 = time.perf_counter()
        sent = size = 0
        try:
            parts = chunk_update(header, tensors, self.settings.max_message_bytes, candidate_space=space)
            futures = []
            for u in parts:
                data = u.encode()
                self._check_size(u.header, len(data))
                futures.append(self._snap_producer.send(self.topics.model_snapshots, value=data))
                size += len(data)
                self.metrics.update_size.observe(len(data))
                self.metrics.updates_published.labels(kind="snapshot").inc()
            self._snap_producer.flush()
            for f in futures:
                f.get(timeout=60)
            sent = len(parts)
        except (KafkaError, InvalidUpdate, ValueError) as exc:
            log.warning("snapshot v%d not published: %r; another follows", header.version, exc)
            with self._lock:
                self._need_snapshot = True
                self._snapshot_not_before = time.monotonic() + _REPUBLISH_PAUSE_S
        self.last_snapshot.update(send_s=round(time.perf_counter() - t1, 3), messages=sent, bytes=size)
        self.metrics.publish_duration.observe(time.perf_counter() - t0)
        if sent:
            log.info("snapshot v%d published: %d messages, %.1f MB in %.1f s (%.1f s since it was started; candidates %.1f s "
                     "on the training thread)", header.version, sent, size / 1e6, time.perf_counter() - t1, time.perf_counter() - t0,
                     self.last_snapshot.get("candidates_s", 0.0))
        return sent

    def _header(self, head: dict[str, Any], kind: str, version: int, *, base: int | None, published: list[tuple[str, str, float]],
                newest_event_time: float, newest_published: float, deltas_from: int | None = None) -> UpdateHeader:
        ranking = head.get("ranking")
        return UpdateHeader(
            version=version, kind="snapshot" if kind == "snapshot" else "delta", base_version=base, deltas_from=deltas_from,
            global_mean=float(head.get("global_mean", 0.0)), user_ids=list(head.get("user_ids", [])),
            item_ids=list(head.get("item_ids", [])), ranking=RankWeights.from_dict(ranking) if ranking is not None else None,
            expired_user_ids=list(head.get("expired_user_ids", [])), expired_item_ids=list(head.get("expired_item_ids", [])),
            newest_event_time=float(newest_event_time), newest_published=float(newest_published),
            published=[(str(u), str(i), float(p)) for u, i, p in published], offsets=dict(self._offsets), created=time.time())

    def _check_size(self, h: UpdateHeader, n: int) -> None:
        if n > self.settings.max_message_bytes:
            log.warning("model update v%d part %d is %d bytes, above max_message_bytes=%d (one row too large?)",
                        h.version, h.chunk, n, self.settings.max_message_bytes)

    def _refused(self) -> None:
        self._in_sync = False
        self._need_snapshot = True
        self._snapshot_not_before = time.monotonic() + _REPUBLISH_PAUSE_S

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self) -> Checkpoint | None:
        """Write model, prequential, drift and erasure state with the consumed offsets (atomic).

        After an erasure the learned-id log loses the erased ids' lines and older checkpoints are
        removed once this one is in place."""
        self._last_ckpt = t0 = time.monotonic()
        if self.model is None:
            return None
        components = {"model": self.model.state(), "prequential": self.prequential.state(), "drift": self.drift.state(),
                      "erasures": self._erasure_state()}
        erased = set(self._erase_tags)
        info = {
            "examples_learned": self.examples_learned,
            "examples_in_checkpoint": self.examples_learned - self._learned_at_ckpt,
            "newest_event_time": self._newest_event_time,
            "newest_published": self._newest_published,
            "prequential": self.prequential.get(),
            "topic_ids": dict(self._topic_ids),
        }
        try:
            ck = self.store.save(version=self.version, offsets=self._offsets, components=components, info=info,
                                 learned_ids=self._tagged_ids(), erase_tags=erased, drop_older=bool(erased))
        except CheckpointError as exc:
            log.error("%s", exc)
            return None
        self._ckpt_write_s = time.monotonic() - t0  # the next one waits _CHECKPOINT_COST_FACTOR x this
        self._erase_tags -= erased
        self._reset_ids()
        self._learned_at_ckpt = self.examples_learned
        self._mem_seq = ck.seq
        self.last_checkpoint = ck
        self.metrics.last_checkpoint.set(time.time())
        self._commit_due = True  # sent from the poll thread, outside the lock
        return ck

    def _commit_hint(self) -> None:
        """Commit the checkpoint's offsets to Kafka: a hint for lag tools, never read back."""
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        if self._consumer is None or not self._offsets:
            return
        offsets = {}
        for key, off in self._offsets.items():
            topic, part = key.rsplit(":", 1)
            offsets[TopicPartition(topic, int(part))] = OffsetAndMetadata(off, "", -1)
        try:
            self._consumer.commit_async(offsets)
        except Exception as exc:  # noqa: BLE001 - a hint only
            log.debug("offset commit hint failed: %s", exc)

    # ------------------------------------------------------------------ rebalance
    def _fresh_components(self) -> None:
        model_cls, preq_cls, drift_cls = self.classes or _default_classes()
        self.model = model_cls.from_settings(self.settings)
        self.prequential = preq_cls()
        self.drift = drift_cls(detector=self.settings.drift_detector)
        self._in_sync = self.version == 0  # nothing published yet: deltas from the empty model are the truth
        if not self._salt:
            self._salt = os.urandom(16)

    def _on_revoked(self, revoked: Any) -> None:
        if self.active:
            self._deactivate("partition revoked")

    def _deactivate(self, why: str) -> None:
        if not self.active:
            return
        if self._pending_published:
            self.publish_delta()
        self._drop_snapshot_job("standing by")
        self.checkpoint()
        self.active = False
        self.metrics.active.set(0)
        log.info("trainer standing by (%s) at version %d after %d examples", why, self.version, self.examples_learned)

    def _on_assigned(self, assigned: Any) -> None:
        self.assignments += 1
        mine = [tp for tp in assigned if tp.topic == self.topics.examples]
        if self._stopping:
            log.info("assignment while stopping: not taking it (leaving the group)")
            return
        if not mine:
            self.metrics.active.set(0)
            log.info("no examples partition assigned: standby")
            return
        ck = self.store.latest()
        prev_version, in_sync = self.version, False
        if ck is not None and ck.seq == self._mem_seq and self.model is not None:
            log.info("assignment: in-memory state equals checkpoint %d", ck.seq)
            in_sync = self._in_sync
        elif ck is not None:
            self._load(ck)
        else:
            self.model = None
            self._offsets = {}
            self._tombs, self._tomb_max, self._erase_tags = {}, 0.0, set()
            self.examples_learned = 0
            self._learned_at_ckpt = 0
        self._forget_recreated_topics()
        topic_version = self._published_version()
        self._in_sync = in_sync and topic_version <= prev_version  # nobody published since our own last update
        self.version = max(self.version, topic_version, ck.version if ck else 0)
        self.metrics.model_version.set(self.version)
        for tp in mine:
            key = f"{tp.topic}:{tp.partition}"
            if key in self._offsets:
                self._consumer.seek(tp, self._offsets[key])
            else:
                self._consumer.seek_to_beginning(tp)
        self._reset_pending()
        self._reset_ids()
        self._control_seek = True
        self._need_snapshot = self.model is not None
        self._last_ckpt = time.monotonic()
        self.active = True
        self.metrics.active.set(1)
        log.info("trainer active: checkpoint %s, offsets %s, continuing after version %d",
                 ck.seq if ck else None, self._offsets or "beginning", self.version)

    def _forget_recreated_topics(self) -> None:
        """Drop the offsets of an input topic that was deleted and created again since they were taken.

        Offsets count from a topic's creation: a checkpoint's offset on the old examples topic would
        skip that many messages of the new one (a memory-only broker that restarted, or an operator
        who recreated the topic). Kafka gives every topic an id; the checkpoint keeps the ids its
        offsets belong to, and a changed id means reading the new topic from its start (see
        :func:`streamproc.kafka.topic_ids`).
        """
        for topic, now in topic_ids(self.settings, [t for t in (self.topics.examples, self.topics.control) if t]).items():
            was, self._topic_ids[topic] = self._topic_ids.get(topic), now
            if was is None or was == now:
                continue
            dropped = {k: v for k, v in self._offsets.items() if k.rsplit(":", 1)[0] == topic}
            for key in dropped:
                del self._offsets[key]
            self.metrics.recreated_topics.inc()
            log.warning("topic %s was recreated (id %s, the checkpoint's offsets %s were taken on id %s): "
                        "reading it from the start", topic, now, dropped, was)

    def _load(self, ck: Checkpoint) -> None:
        model_cls, preq_cls, drift_cls = self.classes or _default_classes()
        self.model = model_cls.from_state(*ck.components["model"])
        self.prequential = preq_cls.from_state(*ck.components["prequential"])
        self.drift = drift_cls.from_state(*ck.components["drift"])
        self._restore_erasures(ck.components.get("erasures"))
        self._offsets = dict(ck.offsets)
        self._topic_ids = {str(t): str(i) for t, i in dict(ck.info.get("topic_ids") or {}).items()}
        self.examples_learned = int(ck.info.get("examples_learned", 0))
        self._learned_at_ckpt = self.examples_learned
        self._newest_event_time = float(ck.info.get("newest_event_time", 0.0))
        self._newest_published = float(ck.info.get("newest_published", 0.0))
        self._mem_seq = ck.seq
        self.last_checkpoint = ck
        self.metrics.set_prequential(self.prequential.get())
        self._update_model_gauges()
        log.info("restored checkpoint %d (version %d, %d examples learned, offsets %s)",
                 ck.seq, ck.version, self.examples_learned, ck.offsets)

    def _published_version(self, idle_polls: int = 2) -> int:
        """Highest version on the model-updates and model-snapshots topics (reads only their tails);
        also notes where the next delta will land (:attr:`_updates_end`)."""
        from kafka import KafkaConsumer, TopicPartition

        best = 0
        for topic in (self.topics.model_updates, self.topics.model_snapshots):
            tp = TopicPartition(topic, 0)
            c = KafkaConsumer(enable_auto_commit=False, fetch_max_wait_ms=100, **client_config(self.settings))
            try:
                c.assign([tp])
                end = c.end_offsets([tp]).get(tp, 0) or 0
                # the last messages hold the highest version (a snapshot's chunks share one); read on to the real end
                c.seek(tp, max(0, end - 4))
                empty = 0
                deadline = time.monotonic() + 10
                while empty < idle_polls and time.monotonic() < deadline:
                    recs = c.poll(timeout_ms=150)
                    if not recs:
                        empty += 1
                        continue
                    empty = 0
                    for msgs in recs.values():
                        for m in msgs:
                            end = max(end, m.offset + 1)
                            try:
                                best = max(best, peek(m.value).version)
                            except InvalidUpdate:
                                log.warning("unreadable model update at %s offset %d", topic, m.offset)
            finally:
                c.close()
            if topic == self.topics.model_updates:
                self._updates_end = end  # the topic as it is now (recreated after an outage: from 0 again)
        return best

    def _update_lag(self) -> None:
        self._last_lag = time.monotonic()
        if self._consumer is None:
            return
        for tp in self._consumer.assignment():
            hw = self._consumer.highwater(tp)
            if hw is None:
                continue
            done = self._offsets.get(f"{tp.topic}:{tp.partition}", 0)
            self.metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(max(0, hw - done))

    # ------------------------------------------------------------------ erasure
    def _reset_ids(self) -> None:
        self._ids_since_ckpt: list[str] = []
        self._ids_users: list[str] = []
        self._ids_items: list[str] = []

    def _tag(self, kind: str, id_: str) -> str:
        """Salted hash of an id (16 hex digits): what tombstones and the learned-id log hold."""
        return hashlib.blake2b(id_.encode(), digest_size=8, key=self._salt, person=kind.encode()).hexdigest()

    def _tagged_ids(self) -> list[str]:
        """The learned-id log lines since the last checkpoint: ``event_id<TAB>user tag<TAB>item tag``."""
        if not self._salt:
            return list(self._ids_since_ckpt)
        tag = self._tag
        mu = {u: tag("user", u) if u else "" for u in set(self._ids_users)}
        mi = {i: tag("item", i) if i else "" for i in set(self._ids_items)}
        return [f"{e}\t{mu[u]}\t{mi[i]}" for e, u, i in zip(self._ids_since_ckpt, self._ids_users, self._ids_items, strict=True)]

    def _erasure_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        tags = np.array([int(t, 16) for t in self._tombs], np.uint64)
        times = np.array(list(self._tombs.values()), np.float64)
        return {"salt": self._salt.hex()}, {"tag": tags, "time": times}

    def _restore_erasures(self, comp: Any) -> None:
        if comp is None:  # a checkpoint written before erasure existed
            self._tombs, self._tomb_max = {}, 0.0
            self._salt = self._salt or os.urandom(16)
            return
        meta, arrays = comp
        self._salt = bytes.fromhex(meta["salt"])
        tags, times = arrays.get("tag", np.zeros(0, np.uint64)), arrays.get("time", np.zeros(0))
        self._tombs = {format(int(t), "016x"): float(x) for t, x in zip(tags.tolist(), times.tolist(), strict=True)}
        self._tomb_max = max(self._tombs.values(), default=0.0)
        self._erase_tags = set()

    def _drop_erased(self, batch: ExampleBatch) -> ExampleBatch:
        """``batch`` without examples of erased ids published at or before their erasure."""
        pub = batch.records["published"]
        cand = np.flatnonzero(pub <= self._tomb_max)  # later events cannot be affected: no hashing
        if not len(cand):
            return batch
        tombs, memo = self._tombs, {}  # type: dict[str, float], dict[tuple[str, str], float]
        keep = np.ones(len(batch), bool)
        for j in cand.tolist():
            p = float(pub[j])
            for kind, x in (("user", batch.user_ids[j]), ("item", batch.item_ids[j])):
                if not x:
                    continue
                t = memo.get((kind, x))
                if t is None:
                    t = memo[(kind, x)] = tombs.get(self._tag(kind, x), -1.0)
                if p <= t:
                    keep[j] = False
                    break
        if keep.all():
            return batch
        n_drop = int((~keep).sum())
        self.metrics.erasure_dropped_examples.inc(n_drop)
        idx = np.flatnonzero(keep).tolist()
        pick = lambda xs: [xs[j] for j in idx]  # noqa: E731
        return ExampleBatch(pick(batch.event_ids), pick(batch.user_ids), pick(batch.item_ids),
                            batch.records[keep], batch.embeddings)

    def erase(self, kind: str, id_: str, at: float, erasure_id: str = "") -> bool:
        """Apply one erasure: forget the id's rows, remember its tombstone (erasure time ``at``, Unix
        s), drop it from the pending delta and id log; the flush (delta, checkpoint) follows.
        Returns whether the model held the id."""
        if kind not in ("user", "item"):
            raise ValueError(f"kind: must be 'user' or 'item', got {kind!r}")
        if self.model is None:
            self._fresh_components()
        tag = self._tag(kind, id_)
        prev = self._tombs.pop(tag, -1.0)
        self._tombs[tag] = max(prev, float(at))  # re-inserted: the newest entry
        while len(self._tombs) > self.settings.erasure_tombstones:
            del self._tombs[next(iter(self._tombs))]
        self._tomb_max = max(self._tomb_max, float(at))
        forget = getattr(self.model, "forget", None)
        gone: tuple[list[str], list[str]] = ([], [])
        if forget is not None:
            gone = forget(users=[id_]) if kind == "user" else forget(items=[id_])
        col = self._pending_users if kind == "user" else self._pending_items
        if id_ in col:
            keep = [n for n, x in enumerate(col) if x != id_]
            self._pending_users = [self._pending_users[n] for n in keep]
            self._pending_items = [self._pending_items[n] for n in keep]
            self._pending_published = [self._pending_published[n] for n in keep]
        col = self._ids_users if kind == "user" else self._ids_items
        if id_ in col:
            keep = [n for n, x in enumerate(col) if x != id_]
            self._ids_since_ckpt = [self._ids_since_ckpt[n] for n in keep]
            self._ids_users = [self._ids_users[n] for n in keep]
            self._ids_items = [self._ids_items[n] for n in keep]
        self._erase_tags.add(tag)
        self._erasure_flush = True
        self.erasures_applied += 1
        self.metrics.erasures.labels(kind=kind).inc()
        self._update_model_gauges()
        known = bool(gone[0] or gone[1])
        # the id itself is never logged: logs are not erased
        log.info("erasure %s applied: %s %s", erasure_id or "-", kind, "rows dropped" if known else "was not in the model")
        return known

    def flush_erasures(self) -> None:
        """After erasures: a delta listing them as expired (every replica drops them) and a checkpoint
        without them (the only one kept); the next snapshot comes at the latest
        ``_ERASURE_SNAPSHOT_MIN_S`` after the previous one (replicas rebuild from it)."""
        self._erasure_flush = False
        self._last_erasure_flush = time.monotonic()
        if self.model is None:
            return
        self.publish_delta()
        self.checkpoint()
        self._need_snapshot = True
        self._snapshot_not_before = max(self._snapshot_not_before, self._last_snapshot + _ERASURE_SNAPSHOT_MIN_S)
        if time.monotonic() >= self._snapshot_not_before:
            self.publish_snapshot()

    def _poll_control(self) -> None:
        """Apply the control records that arrived (the active trainer only)."""
        c = self._control
        if c is None:
            return
        from kafka import TopicPartition

        tp = TopicPartition(self.topics.control, 0)
        key = f"{tp.topic}:{tp.partition}"
        if self._control_seek:
            self._control_seek = False
            c.assign([tp])
            if key in self._offsets:
                c.seek(tp, self._offsets[key])
            else:
                c.seek_to_beginning(tp)
        applied = False
        for msgs in c.poll(timeout_ms=0, max_records=_CONTROL_POLL_RECORDS).values():
            for msg in msgs:
                applied = self._apply_control(key, msg) or applied
        if applied and time.monotonic() - self._last_erasure_flush >= _ERASURE_FLUSH_MIN_S:
            self.flush_erasures()

    def _apply_control(self, key: str, msg: Any) -> bool:
        expected = self._offsets.get(key)
        if expected is not None and msg.offset < expected:
            return False
        self._offsets[key] = msg.offset + 1
        try:
            rec = ControlRecord.parse(msg.value)
        except InvalidControl as exc:
            self.metrics.invalid_control_records.labels(reason=exc.reason).inc()
            log.warning("control record %s@%d refused (%s): %s; sent to %s", key, msg.offset, exc.reason, exc, self.topics.dead_letters)
            headers = [("reason", exc.reason.encode()), ("message", str(exc).encode("utf-8", "replace")[:1000]),
                       ("field", (exc.field or "").encode()), ("source_topic", msg.topic.encode()),
                       ("source_partition", str(msg.partition).encode()), ("source_offset", str(msg.offset).encode())]
            self._producer.send(self.topics.dead_letters, value=msg.value or b"", key=msg.key, headers=headers)
            return False
        ts = getattr(msg, "timestamp", None)
        at = ts / 1000.0 if isinstance(ts, (int, float)) and ts > 0 else rec.requested_at
        # a producer clock far ahead would block the id's new events (and hash every example) until then
        at = min(at, time.time())
        self.erase(rec.kind, rec.id, at + ERASURE_SLACK_S, rec.erasure_id)
        return True
