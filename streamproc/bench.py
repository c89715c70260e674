"""Pieces of ``reco bench ingest``: publish as an app would (with a chosen codec), time a worker.

``reco bench ingest --compression CODEC`` publishes the benchmark's events in ``CODEC``-compressed
batches (what a Java, librdkafka or kafka-python app with ``compression.type`` sends) and reports
the stream worker's events/s on them, plus one pass per codec (none, gzip, snappy, lz4, zstd) in
the same run so the numbers share a machine state.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from streamproc.settings import Settings

__all__ = ["CODECS", "publish_compressed", "WorkerRun", "codec_pass", "codec_rounds"]

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")


def publish_compressed(settings: Settings, events: list[tuple[float, str, bytes]], codec: str) -> float:
    """Publish ``events`` to the events topic, keyed by user, in ``codec`` batches; returns events/s.

    One aiokafka producer as :func:`streamproc.replay.replay` uses (linger 5 ms, 512 KB batches,
    acks=1), so only the codec differs between passes.
    """
    if codec not in CODECS:
        raise ValueError(f"codec: {codec!r} is not one of {', '.join(CODECS)}")
    from aiokafka import AIOKafkaProducer

    from streamproc.kafka import client_config
    from streamproc.topics import Topics

    topic = Topics.from_settings(settings).events

    async def go() -> float:
        producer = AIOKafkaProducer(linger_ms=5, max_batch_size=512 * 1024, acks=1,
                                    compression_type=None if codec == "none" else codec, **client_config(settings, aio=True))
        await producer.start()
        try:
            t0 = time.perf_counter()
            pending = []
            for _, user, value in events:
                pending.append(await producer.send(topic, value=value, key=user.encode()))
                if len(pending) >= 5000:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)
            return len(events) / (time.perf_counter() - t0)
        finally:
            await producer.stop()

    return asyncio.run(go())


class WorkerRun:
    """A :class:`~streamproc.worker.StreamWorker` running in a thread, with its progress."""

    def __init__(self, settings: Settings, **kw: Any) -> None:
        from prometheus_client import CollectorRegistry

        from streamproc.worker import StreamWorker

        self.registry = CollectorRegistry()
        self.worker = StreamWorker(settings, registry=self.registry, **kw)  # loads the encoder before the clock starts
        self.stop_event = threading.Event()
        self.failure: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, name="stream-worker")
        self.thread.start()

    def _run(self) -> None:
        try:
            self.worker.run(self.stop_event)
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.failure.append(exc)

    @property
    def accounted(self) -> int:
        return self.worker.examples_acked + self.worker.dead_letters_acked

    def wait(self, target: int, deadline: float) -> None:
        """Until ``target`` events are acknowledged as examples or dead letters (or the deadline)."""
        while self.accounted < target and time.monotonic() < deadline and self.thread.is_alive():
            time.sleep(0.02)

    @property
    def seconds(self) -> float:
        """First event consumed → last acknowledgement."""
        return (self.worker.last_acked_at or 0) - (self.worker.first_consumed_at or 0)

    def stop(self) -> None:
        from streamproc.errors import RecoError

        self.stop_event.set()
        self.thread.join()
        if self.failure:
            raise RecoError(f"stream worker failed: {self.failure[0]}")


def codec_pass(settings: Settings, events: list[tuple[float, str, bytes]], codec: str, *, timeout: float,
               tag: str = "", **worker_kw: Any) -> dict[str, Any]:
    """Publish ``events`` in ``codec`` batches to fresh topics, then time a fresh worker through them
    (``worker_kw`` go to the :class:`~streamproc.worker.StreamWorker`; ``tag`` tells passes apart)."""
    from streamproc.kafka import create_topics

    s = Settings(**{**settings.__dict__, "topic_prefix": f"{settings.topic_prefix}{codec}{tag}."})
    create_topics(s)
    publish_rate = publish_compressed(s, events, codec)
    run = WorkerRun(s, **worker_kw)
    try:
        run.wait(len(events), time.monotonic() + timeout)
    finally:
        run.stop()
    seconds = run.seconds
    return {
        "events_per_s": round(len(events) / seconds, 1) if seconds > 0 else None,
        "accounted": run.accounted,
        "examples": run.worker.examples_acked,
        "publish_events_per_s": round(publish_rate, 1),
        "undecodable_batches": sum(v for k, v in _samples(run.registry, "reco_streamproc_undecodable_batches_total")),
    }


def _samples(registry: Any, name: str) -> list[tuple[str, float]]:
    return [(str(s.labels), s.value) for m in registry.collect() for s in m.samples if s.name == name]


def codec_rounds(settings: Settings, events: list[tuple[float, str, bytes]], codecs: list[str], *, rounds: int,
                 timeout: float) -> dict[str, dict[str, Any]]:
    """:func:`codec_pass` for every codec, ``rounds`` times, the order rotated each round (load from
    other processes then hits every codec alike); per codec the median events/s and every run."""
    import statistics

    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in codecs}
    for r in range(rounds):
        for c in codecs[r % len(codecs):] + codecs[: r % len(codecs)]:
            runs[c].append(codec_pass(settings, events, c, timeout=timeout, tag=f"r{r}"))
    out: dict[str, dict[str, Any]] = {}
    for c, rs in runs.items():
        rates = [x["events_per_s"] or 0.0 for x in rs]
        out[c] = {"events_per_s": round(statistics.median(rates), 1), "runs_events_per_s": rates,
                  "publish_events_per_s": round(statistics.median(x["publish_events_per_s"] for x in rs), 1),
                  "accounted_min": min(x["accounted"] for x in rs),
                  "undecodable_batches": sum(x["undecodable_batches"] for x in rs)}
    return out
