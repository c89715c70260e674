"""Serving's Kafka side: follow model updates, answer recommendation requests, push after feedback.

Threads and the event loop:

- :class:`UpdateFollower` (thread, kafka-python): every replica reads the single partitions of the
  model-snapshots and model-updates topics itself (``assign``, no group). It starts from the newest
  complete snapshot on model-snapshots, then reads model-updates from the offset that snapshot
  names (``deltas_from``) and applies each delta as it arrives; in steady state it reads deltas
  only. A gap (a delta whose ``base_version`` is not the served version) makes it reload from
  the newest snapshot newer than the served version. Models are built on this thread, never on
  the event loop.
- :class:`SnapshotPublisher` (thread, only with ``RECO_PUBLISH_SNAPSHOTS_S`` > 0): publishes the
  model this replica serves as a snapshot on model-snapshots, so that the trainer need not (a
  trainer's snapshot recomputes every user's candidates: ~45 s of its training thread at 1M users;
  a replica holds them). The trainer still publishes when no snapshot younger than a third of the
  update topics' retention is there, and after a restore, a refused update or an erasure.
- :class:`Pusher` (thread): after a swap whose update names users in ``published``, computes
  their refreshed top-k (rate-limited per user) and hands the messages to the loop's producer.
- :class:`KafkaIO` (event loop, aiokafka): one producer (events from ``POST /v1/events``,
  request replies, pushes) and the ``{prefix}serving`` consumer group on the requests topic.

Messages (JSON):

- request (``rec-requests``, key: user_id): ``{"request_id", "user_id", "k": 10, "exclude_seen": true}``,
  optionally with the request-time rules ``"category"``, ``"exclude"``, ``"fields"`` (each a string,
  comma-separated, or a list of strings; :class:`serving.catalog.Rules`); an invalid rule gets the
  error ``invalid_<rule>``
- reply (``recommendations``, key: user_id, header ``correlation_id`` = request_id):
  ``{"request_id", "user_id", "items": [{"item_id", "score"}], "version", "fallback", "reason": "request"}``,
  or ``{"request_id", "user_id", "error": <code>, "message"}`` for an invalid request (no reply
  when the request has no usable ``request_id``; counted as ``status="invalid"`` either way)
- push (``recommendations``, key: user_id): as a reply, with ``"reason": "push"`` and ``"created"``
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from serving.catalog import Catalog, CatalogFollower, RuleError, Rules
from serving.metrics import ServingMetrics
from serving.model import ServingModel
from serving.settings import ServingSettings
from serving.store import ModelStore
from streamproc.errors import InvalidUpdate
from streamproc.kafka import GROUP_TIMEOUTS, TopicIdWatch, client_config
from streamproc.topics import Topics
from trainer.updates import ModelUpdate, peek

__all__ = ["UpdateFollower", "Pusher", "KafkaIO", "answer_request"]

log = logging.getLogger(__name__)

Message = tuple[bytes | None, bytes, list[tuple[str, bytes]]]  # key, value, headers
PUSH_CHUNK = 256  # users per push round (see Pusher)


def _has_complete_snapshot(values: list[bytes]) -> bool:
    """Whether ``values`` hold every chunk of some snapshot version."""
    chunks: dict[int, set[int]] = {}
    for data in values:
        try:
            h = peek(data)
        except InvalidUpdate:
            continue
        if not h.is_snapshot:
            continue
        got = chunks.setdefault(h.version, set())
        got.add(h.chunk)
        if len(got) >= h.chunks:
            return True
    return False


class UpdateFollower(threading.Thread):
    """Reads the model-snapshots and model-updates topics into a :class:`~serving.store.ModelStore`
    (daemon thread; see the module docstring).

    ``delta_bytes_read`` / ``snapshot_bytes_read`` count the message bytes this replica read from
    model-updates / model-snapshots (the scale bench's traffic per replica); ``snapshot_loads`` the
    snapshots loaded from model-snapshots.
    A model-snapshots topic without a complete snapshot (an older trainer wrote its snapshots into
    model-updates: rolling upgrade) falls back to catching up on model-updates from its tail.
    """

    def __init__(self, settings: ServingSettings, store: ModelStore, *, poll_ms: int = 100, catch_up_window: int = 256,
                 snapshot_check_s: float = 1.0) -> None:
        super().__init__(name="model-updates", daemon=True)
        self.settings = settings
        self.store = store
        self.poll_ms = poll_ms
        self.catch_up_window = catch_up_window
        self.snapshot_check_s = snapshot_check_s
        self.caught_up_from: int | None = None  # first model-updates offset read at start-up
        topics = Topics.from_settings(settings)
        self.topic, self.snapshot_topic = topics.model_updates, topics.model_snapshots
        self.connected = False
        self.caught_up = threading.Event()
        self.delta_bytes_read = 0
        self.snapshot_bytes_read = 0
        self.snapshot_loads = 0
        self._halt = threading.Event()
        self._last_ok = 0.0
        self._next_offset = 0
        self._need_snapshot = True  # no model yet, or a gap: deltas wait for a snapshot
        self._skip_through = -1  # deltas up to this version are older than the loaded snapshot
        self._snap_end_seen = -1  # model-snapshots end offset at the last look
        self._last_snap_check = 0.0
        self._point: tuple[ServingModel, int] | None = None  # see snapshot_point
        self._topic_id = TopicIdWatch(settings, self.topic)  # model-updates' Kafka topic id (a new one: recreated)

    @property
    def bytes_read(self) -> int:
        return self.delta_bytes_read + self.snapshot_bytes_read

    def snapshot_point(self) -> tuple[ServingModel, int] | None:
        """``(model, offset)``: the served model and the model-updates offset where the deltas
        after it start (a snapshot's ``deltas_from``); None while this replica waits for a
        snapshot (no model yet, or a gap). Set by this thread after each message, read by others."""
        return self._point

    def _note_point(self) -> None:
        model = self.store.current
        self._point = None if self._need_snapshot or model is None else (model, self._next_offset)

    def stop(self) -> None:
        self._halt.set()

    def _consumer(self) -> Any:
        from kafka import KafkaConsumer

        fetch = max(4 * self.settings.max_message_bytes, 8 << 20)
        return KafkaConsumer(
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=fetch,
            fetch_max_bytes=fetch,
            fetch_max_wait_ms=10,  # freshness: the broker answers a fetch at once instead of holding it 500 ms
            request_timeout_ms=15_000,
            **client_config(self.settings),
        )

    def run(self) -> None:
        from kafka import TopicPartition

        backoff = 0.5
        while not self._halt.is_set():
            try:
                consumer = self._consumer()
            except Exception as exc:  # noqa: BLE001 - broker down at start: retry
                self.connected = False
                log.warning("model-updates: Kafka not reachable (%s); retrying", exc)
                self._halt.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            try:
                tp, tps = TopicPartition(self.topic, 0), TopicPartition(self.snapshot_topic, 0)
                consumer.assign([tp, tps])
                consumer.pause(tps)  # steady state: deltas only
                if not self.caught_up.is_set():
                    self._topic_id.recreated()  # the first look: remembers the id
                    self._start(consumer, tp, tps)
                    self.caught_up.set()
                else:  # reconnect: continue after what we applied
                    consumer.seek(tp, self._next_offset)
                    self._check_recreated(consumer, tp)
                self._follow(consumer, tp, tps)
                return
            except Exception as exc:  # noqa: BLE001
                self.connected = False
                log.warning("model-updates consumer failed (%s); reconnecting", exc)
                self._halt.wait(backoff)
            finally:
                try:
                    consumer.close()
                except Exception:  # noqa: BLE001
                    pass

    # ------------------------------------------------------------------ start-up
    def _start(self, consumer: Any, tp: Any, tps: Any) -> None:
        """The newest complete snapshot, then the deltas after it up to the current end."""
        t0 = time.perf_counter()
        if not self._load_snapshot(consumer, tp, tps):
            self._catch_up(consumer, tp)  # no snapshot on model-snapshots: an older trainer's topic layout
            self._need_snapshot = self.store.current is None
        else:
            self.caught_up_from = self._next_offset
            end = consumer.end_offsets([tp], timeout_ms=15_000)[tp]
            for value in self._read_to_end(consumer, tp, end):
                self._apply(value)
        self._note_point()
        log.info("model-updates: started in %.2f s from %s, serving version %s", time.perf_counter() - t0,
                 f"snapshot topic + deltas from offset {self.caught_up_from}" if self.snapshot_loads else "model-updates", self.store.version)

    def _catch_up(self, consumer: Any, tp: Any) -> None:
        """Read the tail of model-updates: a window from the end, grown until it holds a complete
        snapshot (or reaches the start); apply the last complete snapshot and what followed it."""
        t0 = time.perf_counter()
        end = consumer.end_offsets([tp], timeout_ms=15_000)[tp]
        self._mark_ok()
        window = self.catch_up_window
        while True:
            start = max(0, end - window)
            consumer.seek(tp, start)
            values = list(self._read_to_end(consumer, tp, end))
            if start == 0 or _has_complete_snapshot(values):
                break
            window *= 4
        self.caught_up_from = start
        swaps = self.store.catch_up(values)
        log.info("model-updates: caught up on %d messages from offset %d in %.2f s (%d swaps), serving version %s",
                 len(values), start, time.perf_counter() - t0, swaps, self.store.version)

    # ------------------------------------------------------------------ snapshots
    def _read_range(self, consumer: Any, tp: Any, lo: int, hi: int) -> list[bytes]:
        """Values at offsets ``lo`` ≤ offset < ``hi`` of ``tp`` (the only partition resumed)."""
        consumer.seek(tp, lo)
        out: list[bytes] = []
        quiet = 0
        while not self._halt.is_set() and quiet < 3:
            batch = consumer.poll(timeout_ms=500, max_records=500)
            recs = [r for part in batch.values() for r in part]
            quiet = 0 if recs else quiet + 1
            for r in recs:
                if lo <= r.offset < hi:
                    out.append(r.value)
                self.snapshot_bytes_read += len(r.value or b"")
            if consumer.position(tp) >= hi:
                break
        return out

    def _newest_snapshot(self, consumer: Any, tps: Any, end: int, last_value: bytes | None) -> list[bytes] | None:
        """The chunks of the newest complete snapshot below offset ``end`` of model-snapshots.

        One trainer sends one snapshot at a time, so a snapshot's chunks are consecutive: the last
        message's ``chunk`` says where its snapshot starts."""
        hi = end
        while hi > 0 and not self._halt.is_set():
            last = [last_value] if hi == end and last_value is not None else self._read_range(consumer, tps, hi - 1, hi)
            if not last:
                return None
            try:
                h = peek(last[-1])
            except InvalidUpdate as exc:
                log.warning("model-snapshots: unreadable message at offset %d: %s", hi - 1, exc)
                hi -= 1
                continue
            lo = hi - 1 - h.chunk
            if h.chunk == h.chunks - 1 and lo >= 0:
                values = self._read_range(consumer, tps, lo, hi - 1) + last
                heads = []
                for v in values:
                    try:
                        heads.append(peek(v))
                    except InvalidUpdate:
                        break
                if len(heads) == h.chunks and all(x.version == h.version and x.chunk == n for n, x in enumerate(heads)):
                    return values
            hi = lo if lo < hi - 1 else hi - 1  # an incomplete snapshot (being sent): the one before it
        return None

    def _real_end(self, consumer: Any, tps: Any) -> tuple[int, bytes | None]:
        """The end offset of ``tps`` and its last message, by reading: Tansu's reported end can lag
        by a batch (here: the last chunk of the newest snapshot) until the next write."""
        end = consumer.end_offsets([tps], timeout_ms=15_000)[tps]
        self._mark_ok()
        consumer.seek(tps, max(0, end - 1))
        last: bytes | None = None
        quiet = 0
        while not self._halt.is_set() and quiet < 1:
            batch = consumer.poll(timeout_ms=200, max_records=500)
            recs = [r for part in batch.values() for r in part]
            quiet = 0 if recs else quiet + 1
            for r in recs:
                if r.offset + 1 >= end:
                    end, last = r.offset + 1, r.value
                self.snapshot_bytes_read += len(r.value or b"")
        return end, last

    def _load_snapshot(self, consumer: Any, tp: Any, tps: Any) -> bool:
        """Load the newest complete snapshot newer than the served version (if model-snapshots
        changed since the last look); then model-updates continues at its ``deltas_from``."""
        consumer.pause(tp)
        consumer.resume(tps)
        try:
            end, last = self._real_end(consumer, tps)
            values = self._newest_snapshot(consumer, tps, end, last) if end != self._snap_end_seen else None
        finally:
            consumer.pause(tps)
            consumer.resume(tp)
        if end == self._snap_end_seen:
            return False
        self._snap_end_seen = end
        if not values:
            return False
        h = peek(values[0])
        cur = self.store.version
        if cur is not None and h.version <= cur:
            if self._need_snapshot:
                log.info("model-snapshots: newest snapshot %d is not newer than the served version %s; waiting for the next", h.version, cur)
            return False
        results = [self.store.apply(v, observe_latency=False) for v in values]
        if not results[-1].swapped:
            return False
        self.snapshot_loads += 1
        self._need_snapshot = False
        self._skip_through = h.version
        if h.deltas_from is not None:
            self._next_offset = h.deltas_from
            consumer.seek(tp, h.deltas_from)
        log.info("model-snapshots: loaded snapshot %d (%d chunks); deltas from model-updates offset %s", h.version, h.chunks, h.deltas_from)
        return True

    # ------------------------------------------------------------------ following
    def _apply(self, value: bytes) -> None:
        """One message of model-updates: history and, while a snapshot is awaited, deltas are skipped."""
        try:
            h = peek(value)
        except InvalidUpdate:
            self.store.apply(value)  # counted as corrupt
            return
        if not h.is_snapshot and (h.version <= self._skip_through or (self._need_snapshot and self.store.current is not None)):
            return
        res = self.store.apply(value)
        if res.swapped and h.is_snapshot:
            self._need_snapshot = False  # an older trainer's snapshot on model-updates
        elif res.reason in ("gap", "no_base"):
            if not self._need_snapshot:
                log.warning("model-updates: %s at delta %d; reloading from %s", res.reason, h.version, self.snapshot_topic)
            self._need_snapshot = True
            self._snap_end_seen = -1  # look again even if nothing new arrived there

    def _read_to_end(self, consumer: Any, tp: Any, end: int) -> Any:
        empty = 0
        while not self._halt.is_set():
            batch = consumer.poll(timeout_ms=300, max_records=200)
            recs = [r for part in batch.values() for r in part]
            for r in recs:
                self._next_offset = r.offset + 1
                self.delta_bytes_read += len(r.value or b"")
                yield r.value
            if consumer.position(tp) >= end:
                # Tansu's end offset can lag by a batch: one quiet poll confirms the end.
                empty = 0 if recs else empty + 1
                if empty >= 1:
                    return

    def _follow(self, consumer: Any, tp: Any, tps: Any) -> None:
        while not self._halt.is_set():
            was_connected = self.connected
            if self._need_snapshot and time.monotonic() - self._last_snap_check >= self.snapshot_check_s:
                self._last_snap_check = time.monotonic()
                self._load_snapshot(consumer, tp, tps)
            batch = consumer.poll(timeout_ms=self.poll_ms, max_records=50)
            recs = [r for part in batch.values() for r in part]
            for r in recs:
                self.delta_bytes_read += len(r.value or b"")
                self._apply(r.value)
                self._next_offset = r.offset + 1
            if recs:
                self._note_point()
                self._mark_ok()
            elif time.monotonic() - self._last_ok > 2.0:
                try:  # a cheap broker round trip tells whether Kafka is still reachable
                    consumer.end_offsets([tp], timeout_ms=2000)
                    self._mark_ok()
                except Exception:  # noqa: BLE001
                    self.connected = False
            if self.connected and not was_connected:
                self._check_recreated(consumer, tp)

    def _check_recreated(self, consumer: Any, tp: Any) -> None:
        """After Kafka was out of reach: if model-updates was deleted and created again (a new topic
        id; a memory-only broker that restarted), its offsets start at 0 again, below where this
        replica stopped, and the trainer's next deltas would be skipped. Read it from its start, and
        look at model-snapshots afresh (recreated too: its end offset proves nothing)."""
        if not self._topic_id.recreated():
            return
        log.info("model-updates: reading %s from offset 0 (had reached %d)", self.topic, self._next_offset)
        self._next_offset = 0
        consumer.seek(tp, 0)
        self._snap_end_seen = -1

    def _mark_ok(self) -> None:
        self.connected = True
        self._last_ok = time.monotonic()


# The publisher gathers, encodes and sends at most this share of the time it takes: at 1M users a
# snapshot's ~570 chunks sent at once took the CPU the follower's deltas and the requests needed
# (feedback probes waited 3-5 s during one in the development loop)
_SNAPSHOT_CPU_SHARE = 0.25


class SnapshotPublisher(threading.Thread):
    """Publishes the follower's model as a snapshot on model-snapshots every
    ``settings.publish_snapshots_s`` seconds when its version moved (daemon thread).

    The snapshot holds what this replica serves (:meth:`ServingModel.snapshot`), with the version
    it serves and ``deltas_from`` = the model-updates offset after that version's delta, so a new
    replica built from it and the deltas after it holds what the followers hold. Its header's
    ``publisher`` is ``"serving"``. Set it on one replica (a Deployment of one next to the serving
    one): several publishers interleave their chunks, and readers take only a snapshot whose
    chunks are consecutive.
    """

    def __init__(self, settings: ServingSettings, follower: UpdateFollower, metrics: ServingMetrics | None = None) -> None:
        super().__init__(name="snapshot-publisher", daemon=True)
        self.settings, self.follower, self.metrics = settings, follower, metrics
        self.topic = Topics.from_settings(settings).model_snapshots
        self.published_version: int | None = None
        self.last: dict[str, Any] = {}  # version, messages, bytes, seconds of the last snapshot published
        self._producer: Any = None
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        try:
            start = time.monotonic()
            while not self._halt.wait(max(0.0, start + self.settings.publish_snapshots_s - time.monotonic())):
                start = time.monotonic()  # from one snapshot's start to the next's (a paced one takes a while)
                point = self.follower.snapshot_point()
                if point is None or point[0].version == self.published_version:
                    continue
                try:
                    self.publish(*point)
                except Exception as exc:  # noqa: BLE001 - the broker, or a model that cannot be encoded: the next turn retries
                    log.warning("snapshot v%d not published: %r; the next try in %.0f s", point[0].version, exc,
                                self.settings.publish_snapshots_s)
        finally:
            if self._producer is not None:
                self._producer.close(5)

    def publish(self, model: ServingModel, deltas_from: int) -> int:
        """Chunk, encode and send ``model`` as a snapshot; returns the messages sent."""
        from kafka import KafkaProducer

        from trainer.updates import UpdateHeader

        t0 = time.perf_counter()
        h = model.header
        header = UpdateHeader(version=model.version, kind="snapshot", deltas_from=deltas_from, global_mean=model.global_mean,
                              ranking=model.ranking, newest_event_time=h.newest_event_time, newest_published=h.newest_published,
                              created=time.time(), extra={"publisher": "serving"})
        chunks, parts = model.snapshot(header, self.settings.max_message_bytes)
        if self._producer is None:
            self._producer = KafkaProducer(linger_ms=5, acks=1, max_request_size=max(2 * self.settings.max_message_bytes, 1_048_576),
                                           compression_type=self.settings.compression_type, **client_config(self.settings))
        size = 0
        futures = []
        pause_per_s = 1.0 / _SNAPSHOT_CPU_SHARE - 1.0
        t = time.perf_counter()
        for part in parts:
            data = part.encode()
            size += len(data)
            futures.append(self._producer.send(self.topic, value=data))
            if self._halt.wait(pause_per_s * (time.perf_counter() - t)):
                log.info("snapshot v%d abandoned after %d of %d messages: stopping (readers skip an incomplete one)",
                         model.version, len(futures), chunks)
                return 0
            t = time.perf_counter()
        self._producer.flush()
        for f in futures:
            f.get(timeout=60)
        self.published_version = model.version
        self.last = {"version": model.version, "messages": chunks, "bytes": size, "seconds": round(time.perf_counter() - t0, 3)}
        if self.metrics is not None:
            self.metrics.snapshots_published.inc()
        log.info("snapshot v%d published from this replica: %d messages, %.1f MB in %.1f s (deltas from model-updates offset %d)",
                 model.version, chunks, size / 1e6, time.perf_counter() - t0, deltas_from)
        return chunks


class Pusher(threading.Thread):
    """Pushes a user's refreshed top-k after their feedback becomes visible (daemon thread).

    At most one push per user per ``settings.push_min_interval_s``: a user with newer feedback
    inside the interval is pushed when it ends, with the model current at that moment. Pushes go
    out :data:`PUSH_CHUNK` users at a time, and the thread pauses after each chunk so it uses at
    most ``settings.push_max_cpu_share`` of a core: with feedback from ~2,000 distinct users/s
    (1M users) one top-k each took more than a core and starved model updates and requests. Users
    beyond that wait (still one push each, with the newest model; ``reco_serving_push_backlog_users``).

    Parameters
    ----------
    send
        Called with a list of ``(key, value, headers)`` messages; must be thread-safe.
    """

    def __init__(self, settings: ServingSettings, store: ModelStore, send: Callable[[list[Message]], None],
                 metrics: ServingMetrics, *, k: int = 10, catalog: Catalog | None = None) -> None:
        super().__init__(name="push", daemon=True)
        self.settings, self.store, self.send, self.metrics, self.k = settings, store, send, metrics, k
        self.catalog = catalog if catalog is not None else Catalog()  # unavailable items are never pushed
        self._queue: queue.SimpleQueue[list[str] | None] = queue.SimpleQueue()
        self._due: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._halt = threading.Event()

    def on_swap(self, model: ServingModel, update: ModelUpdate) -> None:
        """Store listener: queue the users named in the update's ``published`` list."""
        users = list(dict.fromkeys(u for u, _, _ in update.header.published))
        if users:
            self._queue.put(users)

    def stop(self) -> None:
        self._halt.set()
        self._queue.put(None)

    def run(self) -> None:
        interval = self.settings.push_min_interval_s
        pause_per_s = 1.0 / self.settings.push_max_cpu_share - 1.0
        while not self._halt.is_set():
            now = time.monotonic()
            timeout = max(0.0, min(self._due.values()) - now) if self._due else 1.0
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = []
            while item is not None:
                now = time.monotonic()
                for u in item:
                    self._due.setdefault(u, max(now, self._last.get(u, -1e18) + interval))
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if item is None:
                break
            now = time.monotonic()
            # the oldest first (insertion order), at most a chunk per turn
            ready = list(itertools.islice((u for u, t in self._due.items() if t <= now), PUSH_CHUNK))
            if ready:
                t0 = time.perf_counter()
                self._push(ready, now)
                self._halt.wait((time.perf_counter() - t0) * pause_per_s)  # the CPU share (see the class docstring)
            self.metrics.push_backlog.set(len(self._due))
            if len(self._last) > 100_000:  # bounded memory: forget users outside the interval
                self._last = {u: t for u, t in self._last.items() if now - t < interval}

    def _push(self, users: list[str], now: float) -> None:
        model = self.store.current
        if model is None:
            return
        msgs: list[Message] = []
        created = time.time()
        for u in users:
            del self._due[u]
            if not model.has_user(u):  # erased (or expired) since its feedback was queued: no push
                self._last.pop(u, None)
                continue
            self._last[u] = now
            rec = self.catalog.recommend(model, u, self.k, True)
            rec["reason"] = "push"
            rec["created"] = created
            msgs.append((u.encode(), json.dumps(rec).encode(), []))
        if not msgs:
            return
        try:
            self.send(msgs)
            self.metrics.push_messages.inc(len(msgs))
        except Exception as exc:  # noqa: BLE001 - a failed push is logged, never retried forever
            log.warning("push of %d messages failed: %s", len(msgs), exc)


def answer_request(raw: bytes | None, store: ModelStore, settings: ServingSettings, catalog: Catalog | None = None,
                   metrics: ServingMetrics | None = None) -> tuple[Message, str]:
    """Answer one message of the requests topic: ``((key, value, headers), status)``.

    ``status`` is ``ok``, ``invalid`` (bad request; the reply carries ``error``) or ``error``
    (no model yet). A request without a usable ``request_id`` gets no reply (``key`` None and
    empty value).

    Examples
    --------
    >>> (key, value, headers), status = answer_request(b'{"request_id": "r1", "user_id": "u", "k": 0}',
    ...                                                ModelStore(), ServingSettings())
    >>> status, json.loads(value)["error"], headers
    ('invalid', 'invalid_k', [('correlation_id', b'r1')])
    """
    try:
        req = json.loads(raw) if raw is not None else None
    except (ValueError, UnicodeDecodeError):
        req = None
    if not isinstance(req, dict):
        return (None, b"", []), "invalid"
    rid = req.get("request_id")
    if not isinstance(rid, str) or not rid or len(rid) > 256:
        return (None, b"", []), "invalid"
    headers = [("correlation_id", rid.encode())]
    user = req.get("user_id")
    key = user.encode() if isinstance(user, str) and user else None

    def error(code: str, message: str, status: str = "invalid") -> tuple[Message, str]:
        body = {"request_id": rid, "user_id": user if isinstance(user, str) else None, "error": code, "message": message}
        return (key, json.dumps(body).encode(), headers), status

    if not isinstance(user, str) or not user or len(user) > 256:
        return error("invalid_user_id", "user_id must be a non-empty string of at most 256 characters")
    k = req.get("k", 10)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= settings.max_k:
        return error("invalid_k", f"k must be an integer between 1 and {settings.max_k}")
    exclude = req.get("exclude_seen", True)
    if not isinstance(exclude, bool):
        return error("invalid_exclude_seen", "exclude_seen must be true or false")
    try:
        rules = Rules.from_request(req)
    except RuleError as exc:
        return error(f"invalid_{exc.field}", str(exc))
    model = store.current
    if model is None:
        return error("no_model", "no model loaded yet", "error")
    if rules.filtered and metrics is not None:
        metrics.count_filtered(rules)
    body = (catalog if catalog is not None else Catalog()).recommend(model, user, k, exclude, rules)
    body["request_id"] = rid
    body["reason"] = "request"
    return (key, json.dumps(body).encode(), headers), "ok"


class KafkaIO:
    """The serving role's Kafka clients, started and stopped with the app (see ``create_app``)."""

    def __init__(self, settings: ServingSettings, store: ModelStore, metrics: ServingMetrics, *, catalog: Catalog | None = None) -> None:
        self.settings, self.store, self.metrics = settings, store, metrics
        self.topics = Topics.from_settings(settings)
        self.follower = UpdateFollower(settings, store)
        self.catalog = catalog if catalog is not None else Catalog()
        self.catalog_follower: CatalogFollower | None = CatalogFollower(settings, self.catalog)
        self.pusher: Pusher | None = None
        self.snapshots = SnapshotPublisher(settings, self.follower, metrics) if settings.publish_snapshots_s > 0 else None
        self._producer: Any = None
        self._requests_task: asyncio.Task[None] | None = None
        self._producer_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.producer_ok = False
        self.requests_ok = False
        self._requests_id = TopicIdWatch(settings, self.topics.requests, timeout_ms=2000)  # a new id: recreated

    @property
    def connected(self) -> bool:
        return self.follower.connected and self.producer_ok

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.follower.start()
        if self.snapshots is not None:
            self.snapshots.start()
        if self.catalog_follower is not None:
            self.catalog_follower.start()
        if self.settings.push_enabled:
            self.pusher = Pusher(self.settings, self.store, self._send_threadsafe, self.metrics, catalog=self.catalog)
            self.store.listeners.append(self.pusher.on_swap)
            self.pusher.start()
        self._producer_task = asyncio.create_task(self._start_producer())
        self._requests_task = asyncio.create_task(self._serve_requests())

    async def _start_producer(self) -> None:
        from aiokafka import AIOKafkaProducer

        backoff = 0.5
        while True:
            producer = AIOKafkaProducer(linger_ms=2, acks=1, max_request_size=self.settings.max_message_bytes,
                                        **client_config(self.settings, aio=True))
            try:
                await producer.start()
                self._producer = producer
                self.producer_ok = True
                break
            except Exception as exc:  # noqa: BLE001
                log.warning("producer: Kafka not reachable (%s); retrying", exc)
                await producer.stop()
                await asyncio.sleep(backoff)
                backoff = min(2 * backoff, 5.0)
        # A failed send marks the producer unhealthy; without this probe it would stay so until the
        # next push happened to succeed (readiness stuck at 503 after a broker outage).
        while True:
            await asyncio.sleep(1.0)
            if not self.producer_ok and self._producer is not None:
                try:
                    await asyncio.wait_for(self._producer.partitions_for(self.topics.recommendations), 2.0)
                    self.producer_ok = True
                except Exception:  # noqa: BLE001 - still unreachable
                    pass

    async def publish(self, topic: str, messages: list[Message]) -> None:
        """Send and wait for the broker's acknowledgement of every message."""
        if self._producer is None:
            from streamproc.errors import BrokerUnavailable

            raise BrokerUnavailable("Kafka producer not connected")
        futs = [await self._producer.send(topic, value=v, key=k, headers=h or None) for k, v, h in messages]
        try:
            await asyncio.gather(*futs)
            self.producer_ok = True
        except Exception:
            self.producer_ok = False
            raise

    def _send_threadsafe(self, messages: list[Message]) -> None:
        assert self._loop is not None
        fut = asyncio.run_coroutine_threadsafe(self.publish(self.topics.recommendations, messages), self._loop)
        fut.result(timeout=30)

    async def _serve_requests(self) -> None:
        from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener

        watch = self._requests_id

        class _Listener(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked: Any) -> None:
                pass

            async def on_partitions_assigned(self, assigned: Any) -> None:
                # A recreated requests topic (memory-only broker restarted) starts at offset 0, below the
                # positions this group re-committed while rejoining. Off the loop: it also serves HTTP.
                if assigned and await asyncio.to_thread(watch.recreated):
                    for tp in assigned:
                        consumer.seek(tp, 0)

        while True:
            consumer = AIOKafkaConsumer(
                group_id=f"{self.settings.topic_prefix}serving",
                auto_offset_reset="earliest",
                **GROUP_TIMEOUTS,
                **client_config(self.settings, aio=True),
            )
            consumer.subscribe([self.topics.requests], listener=_Listener())
            try:
                await consumer.start()
                self.requests_ok = True
                while True:
                    batches = await consumer.getmany(timeout_ms=500, max_records=200)
                    raws = [r.value for part in batches.values() for r in part]
                    if not raws:
                        continue
                    # Scoring a burst off the loop keeps HTTP latency flat.
                    answers = await asyncio.to_thread(
                        lambda batch: [answer_request(r, self.store, self.settings, self.catalog, self.metrics) for r in batch], raws)
                    for _, status in answers:
                        self.metrics.kafka_requests.labels(status).inc()
                    replies = [msg for msg, _ in answers if msg[1]]
                    while self._producer is None:
                        await asyncio.sleep(0.1)
                    if replies:
                        await self.publish(self.topics.recommendations, replies)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                self.requests_ok = False
                log.warning("requests consumer failed (%s); restarting", exc)
                await asyncio.sleep(1.0)
            finally:
                try:
                    await consumer.stop()
                except Exception:  # noqa: BLE001
                    pass

    async def stop(self) -> None:
        for task in (self._requests_task, self._producer_task):
            if task is not None and not task.done():
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):  # noqa: BLE001
                    pass
        if self.pusher is not None:
            self.pusher.stop()
            await asyncio.to_thread(self.pusher.join, 5)
        if self.snapshots is not None:
            self.snapshots.stop()  # a snapshot being sent is finished first (at most the join's wait)
            await asyncio.to_thread(self.snapshots.join, 30)
        self.follower.stop()
        await asyncio.to_thread(self.follower.join, 5)
        if self.catalog_follower is not None:
            self.catalog_follower.stop()
            await asyncio.to_thread(self.catalog_follower.join, 5)
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        self.producer_ok = False
