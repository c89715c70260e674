"""Replay a MovieLens-style dataset (ml-latest-small) as app events, in event-time order.

Ratings become ``rating`` events; tags become ``comment`` events carrying the same user's rating
of that movie when there is one (a review). MovieLens data: see the dataset's README for its
license (research use, no redistribution, cite Harper & Konstan 2015).
"""

from __future__ import annotations

import asyncio
import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamproc.kafka import client_config
from streamproc.settings import Settings
from streamproc.topics import Topics

__all__ = ["DEFAULT_DATASET", "load_events", "replay", "ReplayResult"]

DEFAULT_DATASET = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "ml-latest-small"


def load_events(dataset: str | Path, *, ratings: bool = True, comments: bool = True) -> list[tuple[float, str, bytes]]:
    """(event_time, user_id, serialized event) for the dataset, sorted by event time (stable)."""
    dataset = Path(dataset)
    if not (dataset / "ratings.csv").is_file():
        raise FileNotFoundError(f"{dataset}: no ratings.csv (expected a MovieLens-style directory)")
    out: list[tuple[float, str, bytes]] = []
    rated: dict[tuple[str, str], float] = {}
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    with open(dataset / "ratings.csv", newline="") as f:
        for row in csv.DictReader(f):
            u, m, r, t = row["userId"], row["movieId"], float(row["rating"]), float(row["timestamp"])
            rated[(u, m)] = r
            if ratings:
                ev = {"schema_version": 1, "type": "rating", "event_id": f"ml-r-{u}-{m}", "user_id": u, "item_id": m, "event_time": t, "rating": r}
                out.append((t, u, dumps(ev).encode()))
    if comments and (dataset / "tags.csv").is_file():
        with open(dataset / "tags.csv", newline="", encoding="utf-8") as f:
            for n, row in enumerate(csv.DictReader(f)):
                u, m, text, t = row["userId"], row["movieId"], row["tag"], float(row["timestamp"])
                if not text.strip():
                    continue
                ev = {"schema_version": 1, "type": "comment", "event_id": f"ml-t-{n}", "user_id": u, "item_id": m, "event_time": t, "text": text}
                if (u, m) in rated:
                    ev["rating"] = rated[(u, m)]
                out.append((t, u, dumps(ev).encode()))
    out.sort(key=lambda e: e[0])
    return out


@dataclass
class ReplayResult:
    events: int
    seconds: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


async def _replay(settings: Settings, events: list[tuple[float, str, bytes]], rate: float | None, progress: bool, stop: Any) -> ReplayResult:
    from aiokafka import AIOKafkaProducer
    from tqdm import tqdm

    topic = Topics.from_settings(settings).events
    producer = AIOKafkaProducer(linger_ms=5, max_batch_size=512 * 1024, acks=1, **client_config(settings, aio=True))
    await producer.start()
    bar = tqdm(total=len(events), unit="ev", disable=not progress, mininterval=0.5)
    t0 = time.perf_counter()
    sent = 0
    try:
        pending = []
        for n, (_, user, value) in enumerate(events):
            if stop is not None and n % 256 == 0 and stop.is_set():
                break
            if rate:
                ahead = n / rate - (time.perf_counter() - t0)
                if ahead > 0.002:
                    await asyncio.sleep(ahead)
            pending.append(await producer.send(topic, value=value, key=user.encode()))
            sent += 1
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                bar.update(len(pending))
                pending.clear()
        await asyncio.gather(*pending)
        bar.update(len(pending))
    finally:
        await producer.stop()
        bar.close()
    return ReplayResult(sent, time.perf_counter() - t0)


def replay(settings: Settings, events: list[tuple[float, str, bytes]], *, rate: float | None = None,
           progress: bool = True, stop: Any = None) -> ReplayResult:
    """Publish pre-serialized events to the events topic; ``rate`` in events/s (None = max).

    ``stop`` (a ``threading.Event``) ends the replay early; the result counts what was sent.
    """
    return asyncio.run(_replay(settings, events, rate, progress, stop))
