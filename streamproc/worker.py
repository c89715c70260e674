"""The stream worker: events in, training examples (and dead letters) out.

One :class:`StreamWorker` is one member of the ``{topic_prefix}streamproc`` consumer group on the
events topic: starting a second one splits the partitions between them, stopping one hands its
partitions back (Kafka group rebalance, ``GROUP_TIMEOUTS`` for fast joins on Tansu).

Per fetched batch and partition the worker

1. parses every message with :class:`~streamproc.events.EventValidator`; an invalid one goes to the
   dead-letter topic with its original bytes and key and headers ``reason``, ``message``,
   ``field``, ``source_topic``, ``source_partition``, ``source_offset`` (counted by reason); a
   record batch the Kafka client could not decode (unknown codec, corrupt, bad CRC) arrives as one
   marker (:mod:`streamproc.undecodable`) and becomes one dead letter with reason
   ``undecodable_batch`` and its offsets ``source_offset`` … ``source_last_offset``: the partition
   moves past it and the worker keeps running;
2. drops events whose ``event_id`` is in the de-duplication window;
3. hands comment texts to the :class:`~streamproc.encoder.MicroBatcher` (encoded on its own
   thread);
4. queues the partition's examples as *chunks* (a new chunk starts at the first comment after
   comment-free events); chunks are emitted per partition in offset order as soon as their
   comments are encoded, and rows of a waiting chunk go out ahead of it when their user has no
   comment still being encoded before them: order is kept per user (Kafka's key), so one user's
   burst of comments does not hold back everyone else's ratings;
5. after the broker acknowledged the examples and dead letters of a chunk, its offsets become
   committable (committed every ``commit_interval_s`` and before giving partitions away):
   at-least-once, nothing lost on a crash.

Client choice, measured on the embedded broker (2 shared cores): a faust-streaming agent
(``stream.take(4000, within=0.05)``, parse only, nothing produced) reached ~2,700 events/s, this
aiokafka worker ~24-43k events/s end to end (``reco bench ingest``); the numbers win, so the hot
path is aiokafka (consumer group with ``GROUP_TIMEOUTS`` + producer).

Examples
--------
>>> import threading
>>> w = StreamWorker(settings, encode_fn=fake_encode)          # doctest: +SKIP
>>> stop = threading.Event()
>>> t = threading.Thread(target=w.run, args=(stop,)); t.start()  # doctest: +SKIP
>>> stop.set(); t.join()                                        # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiokafka.abc import ConsumerRebalanceListener
from prometheus_client import CollectorRegistry

from streamproc.dedupe import Deduper
from streamproc.encoder import EncodeFn, MicroBatcher
from streamproc.errors import BrokerUnavailable, InvalidEvent, RecoError
from streamproc.events import ClickEvent, EventValidator, RatingEvent
from streamproc.examples import KIND_CLICK, KIND_COMMENT, KIND_RATING, RECORD_DTYPE, ExampleBatch, ExampleColumns
from streamproc.items import ItemStream
from streamproc.kafka import GROUP_TIMEOUTS, FetchWait, TopicIdWatch, client_config
from streamproc.metrics import StreamMetrics
from streamproc.settings import Settings
from streamproc.topics import Topics
from streamproc.undecodable import UndecodableBatch, undecodable

__all__ = ["StreamWorker", "group_id"]

log = logging.getLogger(__name__)

_NAN = math.nan
# Bytes per example in an ExampleBatch message, beyond its ids (records + JSON quoting).
_RECORD_BYTES = RECORD_DTYPE.itemsize + 12


def group_id(settings: Settings) -> str:
    """Consumer group of the stream workers."""
    return f"{settings.topic_prefix}streamproc"


@dataclass
class _Chunk(ExampleColumns):
    """Consecutive valid events of one partition, emitted together once their comments are encoded."""

    tp: Any
    next_offset: int = 0
    comments: list[tuple[int, Future]] = field(default_factory=list)  # (position in chunk, embedding future)
    dead_letters: list[Any] = field(default_factory=list)  # tasks resolving to delivery futures
    id_bytes: int = 0
    sent: set[int] = field(default_factory=set)  # positions already emitted ahead of the chunk (other users)

    def ready(self) -> bool:
        return all(f.done() for _, f in self.comments)

    def rows(self, positions: list[int], *, whole: bool) -> _Chunk:
        """The rows at ``positions`` as a chunk of their own; ``whole`` keeps the chunk's offset and
        dead letters (it completes the chunk), otherwise they stay with this chunk."""
        sub = _Chunk(self.tp, self.next_offset if whole else 0)
        sub.extend_rows(self, positions)
        where = {p: n for n, p in enumerate(positions)}
        sub.comments = [(where[p], f) for p, f in self.comments if p in where]
        sub.id_bytes = sum(len(sub.event_ids[n]) + len(sub.user_ids[n]) + len(sub.item_ids[n]) for n in range(len(positions)))
        if whole:
            sub.dead_letters = self.dead_letters
        return sub


def _unblocked(queue: deque[_Chunk]) -> list[_Chunk]:
    """Rows of not-yet-ready chunks whose user has no comment still being encoded before them.

    Kafka orders events per key (user); keeping that order is what learning needs. Waiting for the
    whole partition instead would make every user's ratings wait behind one user's burst of
    comments (seconds for a burst of hundreds). These rows are emitted now; their offsets become
    committable only when their chunk completes, so a crash re-emits them (at-least-once).
    """
    blocked: set[str] = set()
    out: list[_Chunk] = []
    for chunk in queue:
        pending = {p for p, f in chunk.comments if not f.done()}
        take = []
        for pos, user in enumerate(chunk.user_ids):
            if user in blocked:
                continue
            if pos in pending:
                blocked.add(user)
            elif pos not in chunk.sent:
                take.append(pos)
        if take:
            chunk.sent.update(take)
            out.append(chunk.rows(take, whole=False))
    return out


@dataclass
class _Ack:
    """What must be acknowledged before ``offsets`` may be committed."""

    futures: list[Any]
    offsets: dict[Any, int]
    kinds: np.ndarray | None
    dead_letters: int


@dataclass
class _Columns(ExampleColumns):
    """Examples of one outgoing ExampleBatch message, column by column, with their embeddings."""

    emb_rows: list[int] = field(default_factory=list)
    embs: list[np.ndarray] = field(default_factory=list)
    rows: int = 0
    bytes: float = 0.0

    def add(self, chunk: _Chunk, start: int, end: int, vectors: list[tuple[int, np.ndarray]], est: float) -> None:
        self.extend(chunk, start, end)
        rows = [-1] * (end - start)
        for pos, vec in vectors:
            rows[pos - start] = len(self.embs)
            self.embs.append(vec)
        self.emb_rows += rows
        self.rows += end - start
        self.bytes += est

    def slice(self, start: int, end: int) -> _Columns:
        """Rows ``start:end`` as new columns (embeddings re-indexed)."""
        out = _Columns()
        out.extend(self, start, end)
        for r in self.emb_rows[start:end]:
            if r >= 0:
                out.emb_rows.append(len(out.embs))
                out.embs.append(self.embs[r])
            else:
                out.emb_rows.append(-1)
        out.rows = end - start
        return out


class StreamWorker:
    """A stream worker, usable in-process (``run(stop_event)`` in a thread) or as ``reco streamproc``.

    Parameters
    ----------
    settings
        Kafka, topic, encoder and dedupe settings.
    registry
        Prometheus registry for the metrics (default: the process registry); ignored if
        ``metrics`` is given.
    metrics
        Pre-built :class:`~streamproc.metrics.StreamMetrics`.
    encode_fn
        ``texts -> float32 [n, dim]``; default: the real encoder (loaded once per process, in the
        constructor so the first comment does not wait for it).
    max_poll_records
        Most records taken from the consumer per fetch.
    commit_interval_s
        How often acknowledged offsets are committed.
    fetch_max_wait_ms
        Longest the broker holds a fetch when there is no data (bounds latency on brokers that
        do not wake long polls early); lengthened while the worker is behind and its fetches come
        back empty (:class:`~streamproc.kafka.FetchWait`).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        metrics: StreamMetrics | None = None,
        encode_fn: EncodeFn | None = None,
        max_poll_records: int = 4000,
        commit_interval_s: float = 0.2,
        fetch_max_wait_ms: int = 20,
    ) -> None:
        if max_poll_records < 1:
            raise ValueError(f"max_poll_records: {max_poll_records} must be >= 1")
        if commit_interval_s < 0:
            raise ValueError(f"commit_interval_s: {commit_interval_s} must be >= 0")
        self.settings = settings
        self.registry = registry
        self.max_poll_records = max_poll_records
        self.commit_interval_s = commit_interval_s
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.fetch_wait: FetchWait | None = None  # built with the consumer (run)
        self.topics = Topics.from_settings(settings)
        self.group_id = group_id(settings)
        self.metrics = metrics if metrics is not None else StreamMetrics(registry)
        self._validator = EventValidator(settings)
        self._dedupe = Deduper(settings.dedupe_window)
        m = self.metrics

        def on_batch(n: int, seconds: float) -> None:
            m.encode_batch_size.observe(n)
            m.encode_duration.observe(seconds)

        self._batcher = MicroBatcher.from_settings(settings, encode_fn, on_batch=on_batch)
        self._stop = threading.Event()
        self._ran = False
        self._pending: dict[Any, deque[_Chunk]] = {}
        self._committable: dict[Any, int] = {}
        self._committed: dict[Any, int] = {}
        self._positions: dict[Any, int] = {}
        self._rebalancing = False
        self._unacked = 0
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._consumer: Any = None
        self._producer: Any = None
        self._lag_children: dict[Any, Any] = {}
        # Progress, for benchmarks and tests.
        self.assigned: set[Any] = set()
        self._events_id = TopicIdWatch(settings, self.topics.events, timeout_ms=2000)  # a new id: recreated
        self.consumed = 0
        self.examples_acked = 0
        self.dead_letters_acked = 0
        self.duplicates = 0
        self.first_consumed_at: float | None = None
        self.last_acked_at: float | None = None
        self.items: ItemStream | None = None

    # ------------------------------------------------------------------ public API
    def run(self, stop_event: threading.Event | None = None) -> None:
        """Consume until ``stop_event`` (or :meth:`close`) is set; then finish in-flight work,
        commit and return. Raises :class:`~streamproc.errors.RecoError` if Kafka fails for good.
        A worker runs once; build a new one to run again."""
        if self._ran:
            raise RecoError("this stream worker has already run; build a new one")
        self._ran = True
        try:
            asyncio.run(self._main(stop_event or threading.Event()))
        finally:
            self._batcher.close()
        if self._failure is not None:
            if isinstance(self._failure, RecoError):
                raise self._failure
            raise RecoError(f"stream worker stopped: {self._failure}") from self._failure

    def close(self) -> None:
        """Ask :meth:`run` to finish (thread-safe)."""
        self._stop.set()

    # ------------------------------------------------------------------ main loop
    async def _main(self, stop_event: threading.Event) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        s = self.settings
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._ack_q: asyncio.Queue[_Ack] = asyncio.Queue()
        from aiokafka.errors import KafkaError

        self._producer = AIOKafkaProducer(
            acks="all", linger_ms=1, max_batch_size=s.max_message_bytes, max_request_size=s.max_message_bytes,
            compression_type=s.compression_type,
            **client_config(s, aio=True),
        )
        try:
            await self._producer.start()
        except KafkaError as exc:
            await self._producer.stop()
            raise BrokerUnavailable(f"no Kafka broker reachable at {s.kafka_bootstrap} ({exc})") from exc
        try:
            self._consumer = AIOKafkaConsumer(
                group_id=self.group_id, enable_auto_commit=False, auto_offset_reset="earliest",
                fetch_max_wait_ms=self.fetch_max_wait_ms, max_partition_fetch_bytes=4 * 1024 * 1024,
                **GROUP_TIMEOUTS, **client_config(s, aio=True),
            )
            self._consumer.subscribe([self.topics.events], listener=_Listener(self))
            try:
                await self._consumer.start()
            except KafkaError as exc:
                await self._consumer.stop()
                raise BrokerUnavailable(f"no Kafka broker reachable at {s.kafka_bootstrap} ({exc})") from exc
            tasks = [asyncio.ensure_future(c) for c in (self._emitter(), self._acker(), self._lag_updater())]
            # The catalogue: item records -> KIND_ITEM examples (streamproc.items), same producer and encoder.
            self.items = ItemStream(self)
            tasks.append(asyncio.ensure_future(self.items.run(lambda: stop_event.is_set() or self._stop.is_set() or self._failure)))
            log.info("stream worker joined group %s on %s", self.group_id, self.topics.events)
            self.fetch_wait = FetchWait(self._consumer, self.fetch_max_wait_ms)
            try:
                while not (stop_event.is_set() or self._stop.is_set() or self._failure):
                    data = await self._consumer.getmany(timeout_ms=100, max_records=self.max_poll_records)
                    if data and not self._rebalancing:
                        self._process(data)
                    self.fetch_wait.after_fetch(bool(data), await self._behind())
                if not self._failure:
                    await self._drain()
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await self._consumer.stop()
        finally:
            await self._producer.stop()
        log.info("stream worker stopped: %d consumed, %d examples, %d dead letters, %d duplicates",
                 self.consumed, self.examples_acked, self.dead_letters_acked, self.duplicates)

    def _process(self, data: dict[Any, list[Any]]) -> None:
        """Validate, de-duplicate and queue one fetch. Synchronous on purpose: nothing else runs
        on the loop meanwhile, so a rebalance never sees half a fetch."""
        parse = self._validator.parse
        seen = self._dedupe.seen
        submit = self._batcher.submit
        n_rating = n_click = n_comment = n_invalid = n_dup = 0
        if self.first_consumed_at is None:
            self.first_consumed_at = time.perf_counter()
        for tp, records in data.items():
            if not records:
                continue
            queue = self._pending.setdefault(tp, deque())
            chunk = _Chunk(tp)
            ids, users, items, kinds, targets, times, pub = chunk.lists()
            id_bytes = 0
            for rec in records:
                try:
                    ev = parse(rec.value)
                except InvalidEvent as exc:
                    bad = undecodable(rec) if rec.value is None else None
                    if bad is not None:  # a record batch the client could not decode, as one marker
                        self._dead_letter_batch(chunk, rec, bad)
                        continue
                    n_invalid += 1
                    self._dead_letter(chunk, rec, exc)
                    continue
                if seen(ev.event_id):
                    n_dup += 1
                    continue
                if isinstance(ev, RatingEvent):
                    n_rating += 1
                    kinds.append(KIND_RATING)
                    targets.append(ev.rating)
                elif isinstance(ev, ClickEvent):
                    n_click += 1
                    kinds.append(KIND_CLICK)
                    targets.append(_NAN)
                else:
                    if kinds and not chunk.comments:
                        # The events before the first comment need not wait for its encoding.
                        chunk.id_bytes, chunk.next_offset = id_bytes, rec.offset
                        queue.append(chunk)
                        chunk = _Chunk(tp)
                        ids, users, items, kinds, targets, times, pub = chunk.lists()
                        id_bytes = 0
                    n_comment += 1
                    chunk.comments.append((len(kinds), submit(ev.text)))
                    kinds.append(KIND_COMMENT)
                    targets.append(_NAN if ev.rating is None else ev.rating)
                ids.append(ev.event_id)
                users.append(ev.user_id)
                items.append(ev.item_id)
                times.append(ev.event_time)
                ts = rec.timestamp
                pub.append(ts / 1000.0 if ts > 0 else time.time())  # no timestamp (old formats): now
                id_bytes += len(ev.event_id) + len(ev.user_id) + len(ev.item_id)
            chunk.id_bytes = id_bytes
            chunk.next_offset = records[-1].offset + 1
            self._positions[tp] = chunk.next_offset
            if chunk.comments:  # wake the emitter when the last comment of the chunk is encoded
                chunk.comments[-1][1].add_done_callback(self._wake_threadsafe)
            queue.append(chunk)
        m = self.metrics.consumed_by_type
        for label, n in (("rating", n_rating), ("click", n_click), ("comment", n_comment), ("invalid", n_invalid)):
            if n:
                m[label].inc(n)
        if n_dup:
            self.metrics.duplicates.inc(n_dup)
            self.duplicates += n_dup
        self.consumed += n_rating + n_click + n_comment + n_invalid + n_dup
        assert self._wake is not None
        self._wake.set()

    def _dead_letter(self, chunk: _Chunk, rec: Any, exc: InvalidEvent, *, reason: str | None = None) -> None:
        reason = reason or exc.reason
        self.metrics.invalid(reason)
        headers = [
            ("reason", reason.encode()),
            ("message", str(exc).encode("utf-8", "replace")[:1000]),
            ("field", (exc.field or "").encode()),
            ("source_topic", rec.topic.encode()),
            ("source_partition", str(rec.partition).encode()),
            ("source_offset", str(rec.offset).encode()),
        ]
        value = rec.value if rec.value is not None else b""
        send = self._producer.send(self.topics.dead_letters, value=value, key=rec.key, headers=headers)
        chunk.dead_letters.append(asyncio.ensure_future(send))

    def _dead_letter_batch(self, chunk: _Chunk, rec: Any, bad: UndecodableBatch) -> None:
        """A batch the client library could not decode: one dead letter naming its offsets.

        The batch's bytes cannot be attached (the library never handed them out); its offsets
        do: re-read them from the source partition once the cause (e.g. a codec) is fixed.
        """
        self.metrics.undecodable(bad.reason, bad.records)
        headers = [
            ("reason", b"undecodable_batch"),
            ("message", f"{bad.reason} ({bad.codec}): {bad.message}".encode("utf-8", "replace")[:1000]),
            ("field", b""),
            ("source_topic", bad.topic.encode()),
            ("source_partition", str(bad.partition).encode()),
            ("source_offset", str(bad.first_offset).encode()),
            ("source_last_offset", str(bad.last_offset).encode()),
            ("codec", bad.codec.encode()),
        ]
        send = self._producer.send(self.topics.dead_letters, value=b"", key=None, headers=headers)
        chunk.dead_letters.append(asyncio.ensure_future(send))

    def _wake_threadsafe(self, _fut: Any = None) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # loop closed meanwhile
                pass

    # ------------------------------------------------------------------ emitting
    async def _emitter(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._emit_ready()
            except Exception as exc:  # noqa: BLE001 - a producer failure stops the worker, uncommitted
                log.exception("emitting examples failed")
                self._failure = exc
                return

    async def _emit_ready(self) -> None:
        ready: list[_Chunk] = []
        early: list[_Chunk] = []
        for q in self._pending.values():
            while q and q[0].ready():
                chunk = q.popleft()
                if chunk.sent:  # some rows went out ahead: send the rest, with the chunk's offset
                    chunk = chunk.rows([i for i in range(len(chunk.kinds)) if i not in chunk.sent], whole=True)
                ready.append(chunk)
            if q:
                early.extend(_unblocked(q))
        if not ready and not early:
            return
        limit = int(self.settings.max_message_bytes * 0.9) - 4096
        futures: list[Any] = []
        offsets: dict[Any, int] = {}
        out = _Columns()
        for chunk in ready + early:  # per user, ready rows precede the early rows of later chunks
            if chunk.next_offset:
                offsets[chunk.tp] = chunk.next_offset
            futures.extend(chunk.dead_letters)
            n = len(chunk.kinds)
            if not n:
                continue
            vectors = []
            for pos, fut in chunk.comments:
                try:
                    vectors.append((pos, fut.result()))
                except Exception as exc:  # noqa: BLE001 - the encoder failed: the example goes out without an embedding
                    log.warning("encoder failed on comment %s: %s", chunk.event_ids[pos], exc)
            per_row = _RECORD_BYTES + 9 + chunk.id_bytes / n
            step = max(1, min(n if not vectors else 128, int(limit // per_row)))
            j = 0
            for start in range(0, n, step):
                end = min(n, start + step)
                k = j
                while k < len(vectors) and vectors[k][0] < end:
                    k += 1
                est = (end - start) * per_row + sum(4 * v.size for _, v in vectors[j:k])
                if out.rows and out.bytes + est > limit:
                    futures.extend(await self._send(out))
                    out = _Columns()
                out.add(chunk, start, end, vectors[j:k], est)
                j = k
        if out.rows:
            futures.extend(await self._send(out))
        n_dead = sum(len(c.dead_letters) for c in ready)
        kinds_list = [c.kinds for c in ready + early if c.kinds]
        kinds = np.concatenate([np.asarray(k, np.uint8) for k in kinds_list]) if kinds_list else None
        self._unacked += 1
        await self._ack_q.put(_Ack(futures, offsets, kinds, n_dead))

    async def _send(self, out: _Columns) -> list[Any]:
        """Send ``out`` as one ExampleBatch message (halved until it fits); returns delivery futures."""
        now = time.time()
        batch = ExampleBatch.build(
            **out.columns(), processed=np.full(out.rows, now), emb_rows=out.emb_rows,
            embeddings=np.stack(out.embs).astype(np.float32, copy=False) if out.embs else None,
        )
        value = batch.encode()
        if len(value) > self.settings.max_message_bytes - 1024 and out.rows > 1:
            # The size estimate was off (e.g. long non-ASCII ids escaped in JSON): split, keep order.
            half = out.rows // 2
            return [*(await self._send(out.slice(0, half))), *(await self._send(out.slice(half, out.rows)))]
        fut = await self._producer.send(self.topics.examples, value=value)
        observe = self.metrics.stage_latency.observe
        for p in out.published:
            observe(now - p)
        return [fut]

    async def _acker(self) -> None:
        """Await acknowledgements in emission order; advance the committable offsets."""
        last_commit = time.monotonic()
        by_kind = self.metrics.examples_by_kind
        while True:
            ack = await self._ack_q.get()
            try:
                for f in ack.futures:
                    r = await f
                    if isinstance(r, asyncio.Future):  # a dead-letter send task resolves to its delivery future
                        await r
            except Exception as exc:  # noqa: BLE001 - not acknowledged: stop without committing
                log.error("the broker did not acknowledge examples/dead letters: %s", exc)
                self._failure = exc
                return
            self._committable.update(ack.offsets)
            if ack.kinds is not None:
                counts = np.bincount(ack.kinds, minlength=3)
                for k in (KIND_RATING, KIND_CLICK, KIND_COMMENT):
                    if counts[k]:
                        by_kind[k].inc(int(counts[k]))
                self.examples_acked += len(ack.kinds)
            if ack.dead_letters:
                self.metrics.dead_letters.inc(ack.dead_letters)
                self.dead_letters_acked += ack.dead_letters
            self.last_acked_at = time.perf_counter()
            self._unacked -= 1
            if time.monotonic() - last_commit >= self.commit_interval_s and self._ack_q.empty():
                await self._commit()
                last_commit = time.monotonic()

    async def _commit(self) -> None:
        todo = {tp: off for tp, off in self._committable.items() if self._committed.get(tp) != off and tp in self.assigned}
        if not todo:
            return
        try:
            await self._consumer.commit(todo)
            self._committed.update(todo)
        except Exception as exc:  # noqa: BLE001 - rebalance in progress etc.; committed again later
            log.warning("offset commit failed (will retry): %s", exc)

    async def _drain(self) -> None:
        """Emit everything fetched so far, wait for its acknowledgements, commit."""
        assert self._wake is not None
        while any(self._pending.values()) and not self._failure:
            self._wake.set()
            await asyncio.sleep(0.005)
        while self._unacked and not self._failure:
            await asyncio.sleep(0.002)
        if not self._failure:
            await self._commit()

    def _lag(self, tp: Any) -> int | None:
        """Records the broker holds past this worker's processed position on ``tp`` (high
        watermark as of the last fetch response), None while either is unknown."""
        hw, pos = self._consumer.highwater(tp), self._positions.get(tp)
        return None if hw is None or pos is None else max(0, hw - pos)

    async def _behind(self) -> int:
        """:meth:`_lag` summed over the assigned partitions; one with nothing processed yet counts
        from its fetch position."""
        n = 0
        for tp in list(self.assigned):
            lag, hw = self._lag(tp), self._consumer.highwater(tp)
            if lag is None and hw is not None:  # nothing processed yet
                try:
                    lag = max(0, hw - await asyncio.wait_for(self._consumer.position(tp), 0.05))
                except Exception:  # noqa: BLE001 - no position yet (reset under way, revoked): not counted
                    continue
            n += lag or 0
        return n

    async def _lag_updater(self) -> None:
        gauge = self.metrics.consumer_lag
        while True:
            for tp in list(self.assigned):
                lag = self._lag(tp)
                if lag is None:
                    continue
                child = self._lag_children.get(tp)
                if child is None:
                    child = self._lag_children[tp] = gauge.labels(topic=tp.topic, partition=str(tp.partition))
                child.set(lag)
            await asyncio.sleep(1.0)

    # ------------------------------------------------------------------ rebalance
    async def _on_revoked(self, revoked: set[Any]) -> None:
        self._rebalancing = True
        if revoked:
            await self._drain()
        for tp in revoked:
            self._pending.pop(tp, None)
            self._positions.pop(tp, None)
            self._committable.pop(tp, None)
            self._committed.pop(tp, None)
            child = self._lag_children.pop(tp, None)
            if child is not None:
                try:
                    self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
                except KeyError:
                    pass
        self.assigned -= set(revoked)
        if revoked:
            log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    async def _on_assigned(self, assigned: set[Any]) -> None:
        self.assigned = set(assigned)
        self._read_recreated_from_start(assigned)
        self._rebalancing = False
        log.info("partitions assigned: %s", sorted(tp.partition for tp in assigned))

    def _read_recreated_from_start(self, assigned: set[Any]) -> None:
        """An events topic deleted and created again (a new Kafka topic id; a memory-only broker that
        restarted) counts its offsets from 0 again: the positions this group had reached, committed
        again while it rejoined, would skip that many new events. Read it from the start instead."""
        topic = self.topics.events
        mine = [tp for tp in assigned if tp.topic == topic]
        if not mine:
            return
        # Synchronous on purpose (~0.1 s, at most 2 s): a fetch that lands while the loop is free during
        # a rebalance is dropped (the main loop), so nothing here may yield to the loop.
        if self._events_id.recreated():
            for tp in mine:
                self._consumer.seek(tp, 0)  # offsets of a new topic start at 0 (auto_offset_reset covers the rest)


class _Listener(ConsumerRebalanceListener):
    """aiokafka rebalance listener: drain and commit before giving partitions away."""

    def __init__(self, worker: StreamWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.worker._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.worker._on_assigned(set(assigned))
