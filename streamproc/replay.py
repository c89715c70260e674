"""Publish app events from a dataset, or from the built-in demo generator, in event-time order.

Sources (each one flag of ``reco demo`` / ``reco replay`` away):

- nothing named: :class:`~streamproc.demo_data.DemoData`, generated, nothing to download;
- ``--dataset DIR``, MovieLens-style (ml-latest-small): ``ratings.csv`` becomes ``rating`` events,
  ``tags.csv`` (optional) ``comment`` events carrying the same user's rating of the movie when
  there is one, ``movies.csv`` (optional) the titles and genres serving shows. MovieLens data: see
  the dataset's README for its license (research use, no redistribution, cite Harper & Konstan
  2015);
- ``--reviews FILE``: JSON lines ``{"user_id", "item_id", "rating", "time", "text"}`` (``text``
  optional: a line with text is a comment carrying its rating, one without a rating).

A missing or malformed file is a :class:`DatasetError` whose message names the file, the line and
what to pass instead; the CLI prints it as one line.
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamproc.errors import RecoError
from streamproc.events import event_dict
from streamproc.kafka import client_config
from streamproc.settings import Settings
from streamproc.topics import Topics

__all__ = ["DEFAULT_DATASET", "DatasetError", "load_events", "load_catalog", "load_reviews", "active_users", "bench_events",
           "bench_texts", "replay", "ReplayResult"]

# Where CI keeps ml-latest-small. Never a default for users: a fresh clone has nothing beside it.
DEFAULT_DATASET = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "ml-latest-small"

_HINT = "pass --dataset DIR (a MovieLens-style directory with ratings.csv), --reviews FILE.jsonl, or neither for the built-in demo data"


class DatasetError(RecoError, ValueError):
    """A named dataset is missing or malformed; the message says which file, where, and what to pass."""


def _rows(path: Path, required: tuple[str, ...]) -> Iterable[tuple[int, dict[str, str]]]:
    try:
        f = open(path, newline="", encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc}); {_HINT}") from None
    with f:
        try:
            reader = csv.DictReader(f)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise DatasetError(f"{path}: no column {', '.join(missing)} in the header {reader.fieldnames!r}; "
                                   f"expected {','.join(required)}")
            for row in reader:
                yield reader.line_num, row
        except (UnicodeDecodeError, csv.Error) as exc:
            raise DatasetError(f"{path}: not a UTF-8 CSV file ({exc})") from None


def _number(path: Path, line: int, column: str, raw: Any, *, json_number: bool = False) -> float:
    if json_number and (isinstance(raw, bool) or not isinstance(raw, (int, float))):
        v = math.nan  # JSON: a number, not "4" (the event contract's rule too)
    else:
        try:
            v = float(raw)
        except (TypeError, ValueError):
            v = math.nan
    if not math.isfinite(v):
        raise DatasetError(f"{path}:{line}: {column} must be a number, got {str(raw)[:40]!r}")
    return v


def load_events(dataset: str | Path, *, ratings: bool = True, comments: bool = True) -> list[tuple[float, str, bytes]]:
    """(event_time, user_id, serialized event) for the dataset, sorted by event time (stable)."""
    dataset = Path(dataset)
    if not dataset.is_dir():
        raise DatasetError(f"{dataset}: no such directory; {_HINT}")
    if not (dataset / "ratings.csv").is_file():
        raise DatasetError(f"{dataset}: no ratings.csv (expected a MovieLens-style directory); {_HINT}")
    out: list[tuple[float, str, bytes]] = []
    rated: dict[tuple[str, str], float] = {}
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    path = dataset / "ratings.csv"
    for line, row in _rows(path, ("userId", "movieId", "rating", "timestamp")):
        u, m = row["userId"], row["movieId"]
        r, t = _number(path, line, "rating", row["rating"]), _number(path, line, "timestamp", row["timestamp"])
        if not u or not m:
            raise DatasetError(f"{path}:{line}: userId and movieId must not be empty")
        rated[(u, m)] = r
        if ratings:
            ev = event_dict("rating", u, m, event_id=f"ml-r-{u}-{m}", event_time=t, rating=r)
            out.append((t, u, dumps(ev).encode()))
    path = dataset / "tags.csv"
    if comments and path.is_file():
        for n, (line, row) in enumerate(_rows(path, ("userId", "movieId", "tag", "timestamp"))):
            u, m, text = row["userId"], row["movieId"], row["tag"] or ""
            t = _number(path, line, "timestamp", row["timestamp"])
            if not text.strip() or not u or not m:
                continue
            ev = event_dict("comment", u, m, event_id=f"ml-t-{n}", event_time=t, text=text)
            if (u, m) in rated:
                ev["rating"] = rated[(u, m)]
            out.append((t, u, dumps(ev).encode()))
    out.sort(key=lambda e: e[0])
    return out


def load_catalog(dataset: str | Path) -> dict[str, Any] | None:
    """Titles and categories from a MovieLens-style ``movies.csv`` (``category``: the first genre,
    ``categories``: every genre), in the format of :meth:`streamproc.demo_data.DemoData.catalog`;
    None when the directory has no movies.csv. ``reco replay`` publishes it as item records."""
    path = Path(dataset) / "movies.csv"
    if not path.is_file():
        return None
    items = {}
    for _, row in _rows(path, ("movieId", "title", "genres")):
        genres = [g for g in (row["genres"] or "").split("|") if g and g != "(no genres listed)"]
        items[row["movieId"]] = {"title": row["title"], "category": genres[0] if genres else "", "categories": genres}
    return {"source": str(dataset), "items": items, "users": []}


def active_users(events: Iterable[tuple[float, str, bytes]], catalog: dict[str, Any] | None, n: int = 20) -> list[dict[str, Any]]:
    """The ``n`` most active users of a dataset, each with the categories they rate highest
    (≥ 4) most often: the users ``/try`` offers when the data is not generated.

    >>> evs = [(0, "a", b'{"item_id":"1","rating":5}'), (1, "a", b'{"item_id":"2","rating":1}'), (2, "b", b'{"item_id":"1"}')]
    >>> active_users(evs, {"items": {"1": {"category": "Drama"}, "2": {"category": "Horror"}}})
    [{'user_id': 'a', 'likes': ['Drama'], 'events': 2}, {'user_id': 'b', 'likes': [], 'events': 1}]
    """
    from collections import Counter

    items = (catalog or {}).get("items", {})
    activity: Counter[str] = Counter()
    liked: dict[str, Counter[str]] = {}
    for _, user, value in events:
        activity[user] += 1
        try:
            ev = json.loads(value)
        except ValueError:
            continue
        rating = ev.get("rating")
        category = items.get(ev.get("item_id"), {}).get("category")
        if category and isinstance(rating, (int, float)) and rating >= 4:
            liked.setdefault(user, Counter())[category] += 1
    return [{"user_id": u, "likes": [c for c, _ in liked.get(u, Counter()).most_common(3)], "events": k}
            for u, k in activity.most_common(n)]


def load_reviews(path: str | Path) -> list[tuple[float, str, bytes]]:
    """Events from a JSON-lines file of ``{"user_id", "item_id", "rating", "time", "text"}``.

    ``rating`` and ``text`` are each optional but a line needs one of them; ``time`` is Unix
    seconds. Sorted by time (stable).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"--reviews {path}: no such file; {_HINT}")
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    out: list[tuple[float, str, bytes]] = []
    try:
        f = open(path, encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from None
    with f:
        try:
            for line, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                except ValueError:
                    raise DatasetError(f"{path}:{line}: not a JSON object; expected "
                                       '{"user_id", "item_id", "rating", "time", "text"} per line') from None
                if not isinstance(obj, dict):
                    raise DatasetError(f"{path}:{line}: expected a JSON object per line, got {type(obj).__name__}")
                for key in ("user_id", "item_id"):
                    if not isinstance(obj.get(key), (str, int)) or isinstance(obj.get(key), bool) or str(obj[key]) == "":
                        raise DatasetError(f"{path}:{line}: {key} is missing or not a string")
                u, m = str(obj["user_id"]), str(obj["item_id"])
                t = _number(path, line, "time", obj.get("time"), json_number=True)
                text = obj.get("text")
                if text is not None and (not isinstance(text, str) or not text.strip()):
                    raise DatasetError(f"{path}:{line}: text must be a non-empty string when present")
                ev = event_dict("comment" if text else "rating", u, m, event_id=f"rv-{line}", event_time=t)
                if obj.get("rating") is not None:
                    ev["rating"] = _number(path, line, "rating", obj["rating"], json_number=True)
                elif not text:
                    raise DatasetError(f"{path}:{line}: a line needs a rating, a text, or both")
                if text:
                    ev["text"] = text
                out.append((t, u, dumps(ev).encode()))
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    if not out:
        raise DatasetError(f"{path}: no reviews in it")
    out.sort(key=lambda e: e[0])
    return out


def bench_events(*, comments: bool = True, n: int = 100_000) -> tuple[list[tuple[float, str, bytes]], str]:
    """Events for the benchmarks and their source, in words: ml-latest-small where it sits beside
    the clone (CI), else ``n`` events of the built-in demo data (a fresh clone)."""
    if (DEFAULT_DATASET / "ratings.csv").is_file():
        return load_events(DEFAULT_DATASET, comments=comments), "ml-latest-small"
    from streamproc.demo_data import DemoData

    demo = DemoData(comment_share=0.15 if comments else 0.0)
    return list(demo.serialized(n, rate=1000.0, start=time.time() - n / 1000.0)), f"demo data (seed {demo.seed}, {n:,} events)"


def bench_texts(n: int) -> tuple[list[str], str]:
    """``n`` comment texts for the encoder benchmark: ml-latest-small's tags where they sit beside
    the clone (CI), else demo-data comments."""
    texts: list[str] = []
    source = "ml-latest-small tags.csv"
    if (DEFAULT_DATASET / "tags.csv").is_file():
        texts = [row["tag"] for _, row in _rows(DEFAULT_DATASET / "tags.csv", ("tag",)) if row["tag"].strip()]
    if not texts:
        from streamproc.demo_data import DemoData

        texts = [e["text"] for e in DemoData(comment_share=1.0, click_share=0.0).events(min(n, 20_000))]
        source = "demo-data comments"
    return (texts * (n // len(texts) + 1))[:n], source


@dataclass
class ReplayResult:
    events: int
    seconds: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


async def _replay(settings: Settings, events: Iterable[tuple[float, str, bytes]], rate: float | None, progress: bool | str,
                  stop: Any, total: int | None) -> ReplayResult:
    from aiokafka import AIOKafkaProducer
    from tqdm import tqdm

    topic = Topics.from_settings(settings).events
    # 50 ms of linger: ~10x fewer record batches than 5 ms at thousands of events/s. Replay is a bulk
    # tool, and the embedded broker (Tansu, in memory) scans a partition's batches on every fetch:
    # at 60,000 one-record batches a fetch of the newest 100 records took 35 ms (measured; see
    # streamproc.kafka.FetchWait), and the 1M-user loop at 2,000 events/s adds ~200 batches/s per
    # partition with 5 ms.
    producer = AIOKafkaProducer(linger_ms=50, max_batch_size=512 * 1024, acks=1, **client_config(settings, aio=True))
    await producer.start()
    if total is None and hasattr(events, "__len__"):
        total = len(events)  # type: ignore[arg-type]
    bar = tqdm(total=total, unit="ev", disable=not progress, mininterval=0.5,
               desc=progress if isinstance(progress, str) else None, dynamic_ncols=True)
    t0 = time.perf_counter()
    sent = 0
    try:
        pending = []
        flushed = t0
        for n, (_, user, value) in enumerate(events):
            if stop is not None and stop.is_set():
                break
            if rate:
                ahead = n / rate - (time.perf_counter() - t0)
                if ahead > 0.002:
                    await asyncio.sleep(ahead)
            pending.append(await producer.send(topic, value=value, key=user.encode()))
            sent += 1
            if len(pending) >= 5000 or (len(pending) >= 64 and time.perf_counter() - flushed > 0.5):
                await asyncio.gather(*pending)
                bar.update(len(pending))
                pending.clear()
                flushed = time.perf_counter()
        await asyncio.gather(*pending)
        bar.update(len(pending))
    finally:
        await producer.stop()
        bar.close()
    return ReplayResult(sent, time.perf_counter() - t0)


def replay(settings: Settings, events: Iterable[tuple[float, str, bytes]], *, rate: float | None = None,
           progress: bool | str = True, stop: Any = None, total: int | None = None) -> ReplayResult:
    """Publish pre-serialized events to the events topic; ``rate`` in events/s (None = max).

    ``events`` may be a list or any iterable (a generator without end: stop it with ``stop``);
    ``total`` sizes the progress bar when ``events`` has no length, and a string ``progress`` is
    the bar's label. ``stop`` (a ``threading.Event``) ends the replay early; the result counts
    what was sent (and acknowledged by the broker).
    """
    return asyncio.run(_replay(settings, events, rate, progress, stop, total))
