"""The item-record contract: what apps publish to the (compacted) items topic, and its stream side.

An item record describes one catalogue item; the newest record per ``item_id`` wins (the topic is
keyed by ``item_id`` and compacted, so the catalogue is durable and replayable from the start)::

    {"item_id": "m42", "title": "Quiet Years (1990)", "categories": ["Drama"],
     "description": "A family drama about ...", "available": true, "updated_at": 1767225600.0}

``item_id``       1-256 printable characters (the id events use)
``title``         1-500 characters
``categories``    list of up to 32 category names (1-100 printable characters each); may be empty
``description``   optional free text (at most ``RECO_MAX_TEXT_CHARS``, default 5000)
``available``     false hides the item from every answer (default true)
``updated_at``    Unix seconds of the change in the app; in the same event-time window as events
``schema_version`` optional, 1

Unknown fields are rejected; a message larger than ``RECO_MAX_EVENT_BYTES`` is rejected. A Kafka
tombstone (key, no value) removes the item from the catalogue. Invalid records go to the
dead-letter topic (headers as for events, ``source_topic`` = the items topic).

The stream worker turns every valid record into one training example of kind
:data:`~streamproc.examples.KIND_ITEM`: the encoded ``title`` + ``description`` (the same text
encoder as comments) as its content vector, ``weight`` 1 when available, else 0.

Examples
--------
>>> v = ItemValidator(Settings())
>>> rec = v.parse(b'{"item_id":"m1","title":"Heat (1995)","categories":["Action","Crime"],'
...               b'"available":true,"updated_at":1700000000}')
>>> rec.categories, rec.available
(('Action', 'Crime'), True)
>>> v.parse(b'{"item_id":"m1","title":"Heat","updated_at":1700000000,"price":3}')
Traceback (most recent call last):
...
streamproc.items.InvalidItem: price: Extra inputs are not permitted
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from streamproc.errors import InvalidEvent
from streamproc.events import json_bytes, validation_reason
from streamproc.settings import Settings

__all__ = ["ITEM_SCHEMA_VERSION", "ItemRecord", "InvalidItem", "ItemValidator", "item_text", "catalog_records",
           "ItemStream", "json_schema", "write_schema", "SCHEMA_PATH", "MAX_CATEGORIES"]

log = logging.getLogger(__name__)

ITEM_SCHEMA_VERSION = 1
MAX_CATEGORIES = 32
SCHEMA_PATH = Path(__file__).with_name("items.schema.json")

_Printable = r"^[^\x00-\x1f\x7f]+$"
Id = Annotated[str, Field(min_length=1, max_length=256, pattern=_Printable)]
Title = Annotated[str, Field(min_length=1, max_length=500, pattern=_Printable)]
Category = Annotated[str, Field(min_length=1, max_length=100, pattern=_Printable)]
Description = Annotated[str, Field(min_length=1, max_length=5000, description="Free text (limit configurable, default 5000)")]


class InvalidItem(InvalidEvent):
    """An item record violates the contract (``reason``, ``field`` as for events)."""


class ItemRecord(BaseModel):
    """One catalogue item; the newest record per ``item_id`` wins."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)

    schema_version: Literal[1] = Field(default=1, description="Version of this contract")
    item_id: Id
    title: Title
    categories: tuple[Category, ...] = Field(default=(), max_length=MAX_CATEGORIES, description="Category names; any-of filters match them")
    description: Description | None = Field(default=None, description="Free text encoded into the item's content vector")
    available: bool = Field(default=True, description="false: never recommended until a newer record says true")
    updated_at: float = Field(description="Unix seconds of the change in the app")

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


def _from_validation_error(exc: ValidationError) -> InvalidItem:
    err = exc.errors(include_url=False)[0]
    field = ".".join(str(p) for p in err["loc"]) or None
    return InvalidItem(f"{field}: {err['msg']}" if field else err["msg"], reason=validation_reason(err), field=field)


class ItemValidator:
    """Parses raw bytes (or dicts) into :class:`ItemRecord` and enforces the settings' limits.

    Raises :class:`InvalidItem` with a ``reason`` label and the field name.
    """

    def __init__(self, settings: Settings, *, clock: Any = time.time) -> None:
        self.settings = settings
        self.clock = clock

    def parse(self, raw: bytes | bytearray | memoryview | None) -> ItemRecord:
        if raw is None:
            raise InvalidItem("empty message (no value)", reason="invalid_json")
        limit = self.settings.max_event_bytes
        if len(raw) > limit:
            raise InvalidItem(f"message is {len(raw)} bytes, larger than the limit {limit}", reason="too_large")
        try:
            bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidItem(f"message is not valid UTF-8 ({exc.reason} at byte {exc.start})", reason="invalid_utf8") from None
        try:
            rec = ItemRecord.model_validate_json(bytes(raw))
        except ValidationError as exc:
            raise _from_validation_error(exc) from None
        except RecursionError:
            raise InvalidItem("JSON nested too deeply", reason="invalid_json") from None
        return self.check(rec)

    def parse_obj(self, obj: Any) -> ItemRecord:
        """Validate an already-decoded JSON value (one element of ``POST /v1/items``)."""
        return self.parse(json_bytes(obj, InvalidItem))

    def check(self, rec: ItemRecord) -> ItemRecord:
        s = self.settings
        if rec.description is not None:
            if len(rec.description) > s.max_text_chars:
                raise InvalidItem(f"description: {len(rec.description)} characters, more than the limit {s.max_text_chars}",
                                  reason="too_long", field="description")
            if not rec.description.strip():
                raise InvalidItem("description: is blank", reason="invalid_value", field="description")
        if not rec.title.strip():
            raise InvalidItem("title: is blank", reason="invalid_value", field="title")
        for n, c in enumerate(rec.categories):
            if not c.strip():
                raise InvalidItem(f"categories.{n}: is blank", reason="invalid_value", field=f"categories.{n}")
        t = rec.updated_at
        if t < s.min_event_time:
            raise InvalidItem(f"updated_at: {t!r} is before {s.min_event_time} (Unix seconds)", reason="out_of_range", field="updated_at")
        if t > self.clock() + s.max_future_s:
            raise InvalidItem(f"updated_at: {t!r} is more than {s.max_future_s} s in the future", reason="out_of_range", field="updated_at")
        return rec

    def complete(self, obj: Any, now: float | None = None) -> Any:
        """``obj`` with ``updated_at`` (now) filled in when absent, as the publisher and the HTTP API do."""
        if isinstance(obj, dict) and "updated_at" not in obj:
            return {**obj, "updated_at": self.clock() if now is None else now}
        return obj


def item_text(rec: ItemRecord) -> str:
    """The text encoded into the item's content vector: title, categories and description."""
    parts = [rec.title.strip()]
    if rec.categories:
        parts.append(", ".join(rec.categories))
    if rec.description:
        parts.append(rec.description.strip())
    return ". ".join(parts)


def catalog_records(catalog: dict[str, Any] | None, *, updated_at: float | None = None) -> list[dict[str, Any]]:
    """Item records from a catalogue dict (:meth:`streamproc.demo_data.DemoData.catalog`,
    :func:`streamproc.replay.load_catalog`): ``{"items": {id: {"title", "category" | "categories",
    "description"?}}}``.

    >>> catalog_records({"items": {"1": {"title": "Heat (1995)", "categories": ["Action", "Crime"]}}}, updated_at=1.7e9)
    [{'item_id': '1', 'title': 'Heat (1995)', 'categories': ['Action', 'Crime'], 'available': True, 'updated_at': 1700000000.0}]
    """
    now = time.time() if updated_at is None else updated_at
    out = []
    for item_id, info in ((catalog or {}).get("items") or {}).items():
        cats = info.get("categories")
        if cats is None:
            cats = [info["category"]] if info.get("category") else []
        rec: dict[str, Any] = {"item_id": str(item_id), "title": str(info.get("title") or item_id)[:500],
                               "categories": [str(c)[:100] for c in cats][:MAX_CATEGORIES], "available": bool(info.get("available", True)),
                               "updated_at": now}
        if info.get("description"):
            rec["description"] = str(info["description"])
        out.append(rec)
    return out


class ItemStream:
    """The stream worker's item side: items topic in, KIND_ITEM examples and dead letters out.

    Runs as one more task on the :class:`~streamproc.worker.StreamWorker`'s event loop, with its
    own consumer group (``{prefix}streamproc-items``) and the worker's producer, encoder and
    metrics. Per fetch: validate, dead-letter the bad records, encode the texts, send one example
    batch, wait for the broker's acknowledgements, commit (at-least-once).
    """

    # Item texts share the encoder with the events' comments: small fetches keep a catalogue import
    # (a fresh demo publishes 1,000 items at start) from queueing hundreds of texts ahead of users'
    # comments.
    def __init__(self, worker: Any, *, max_poll_records: int = 32) -> None:
        self.worker = worker
        self.settings: Settings = worker.settings
        self.topic = worker.topics.items
        self.group_id = f"{self.settings.topic_prefix}streamproc-items"
        self.max_poll_records = max_poll_records
        self.validator = ItemValidator(self.settings)
        self.consumed = 0
        self.examples_acked = 0
        self.dead_letters_acked = 0

    async def run(self, stop: Any) -> None:
        """Consume until ``stop()`` is true (or the task is cancelled); a producer failure stops the
        worker (nothing committed), as on the events side."""
        try:
            await self._run(stop)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            log.exception("item records: the stream worker stops")
            self.worker._failure = exc

    async def _run(self, stop: Any) -> None:
        from aiokafka import AIOKafkaConsumer

        from streamproc.kafka import GROUP_TIMEOUTS, client_config

        consumer = AIOKafkaConsumer(self.topic, group_id=self.group_id, enable_auto_commit=False, auto_offset_reset="earliest",
                                    fetch_max_wait_ms=100, **GROUP_TIMEOUTS, **client_config(self.settings, aio=True))
        while True:
            try:
                await consumer.start()
                break
            except Exception as exc:  # noqa: BLE001 - the events side reports a broker that is down for good
                log.warning("items consumer could not start (%s); retrying", exc)
                await consumer.stop()
                await asyncio.sleep(1.0)
                consumer = AIOKafkaConsumer(self.topic, group_id=self.group_id, enable_auto_commit=False, auto_offset_reset="earliest",
                                            fetch_max_wait_ms=100, **GROUP_TIMEOUTS, **client_config(self.settings, aio=True))
        try:
            while not stop():
                data = await consumer.getmany(timeout_ms=200, max_records=self.max_poll_records)
                records = [r for part in data.values() for r in part]
                if not records:
                    continue
                await self._handle(records)
                await consumer.commit({tp: recs[-1].offset + 1 for tp, recs in data.items() if recs})
        finally:
            await consumer.stop()

    async def _handle(self, records: list[Any]) -> None:
        from streamproc.examples import KIND_ITEM, ExampleBatch
        from streamproc.undecodable import undecodable

        w = self.worker
        m = w.metrics
        futures: list[Any] = []
        valid: list[tuple[Any, ItemRecord]] = []
        n_dead = 0
        for rec in records:
            self.consumed += 1
            if rec.value is None:
                bad = undecodable(rec)
                if bad is None:  # a tombstone: the app removed the item from its catalogue
                    m.items_consumed_by_status["tombstone"].inc()
                    continue
                holder = _Holder()
                w._dead_letter_batch(holder, rec, bad)
                futures += holder.dead_letters
                n_dead += 1
                continue
            try:
                item = self.validator.parse(rec.value)
            except InvalidItem as exc:
                m.items_consumed_by_status["invalid"].inc()
                futures.append(await self._dead_letter(rec, exc))
                n_dead += 1
                continue
            m.items_consumed_by_status["available" if item.available else "unavailable"].inc()
            valid.append((rec, item))
        if valid:
            texts = [item_text(item) for _, item in valid]
            vecs = []
            for fut in [w._batcher.submit(t) for t in texts]:
                try:
                    vecs.append(await asyncio.wrap_future(fut))
                except Exception as exc:  # noqa: BLE001 - the encoder failed: no content vector
                    log.warning("encoder failed on an item text: %s", exc)
                    vecs.append(None)
            rows: list[int] = []
            embs: list[np.ndarray] = []
            for v in vecs:
                rows.append(-1 if v is None else len(embs))
                if v is not None:
                    embs.append(v)
            now = time.time()
            pub = [(r.timestamp / 1000.0 if r.timestamp and r.timestamp > 0 else now) for r, _ in valid]
            n = len(valid)
            batch = ExampleBatch.build(
                event_ids=[f"item:{item.item_id}:{item.updated_at!r}" for _, item in valid], user_ids=[""] * n,
                item_ids=[item.item_id for _, item in valid], kinds=[KIND_ITEM] * n, targets=[math.nan] * n,
                event_times=[item.updated_at for _, item in valid], published=pub, processed=[now] * n,
                weights=[1.0 if item.available else 0.0 for _, item in valid], emb_rows=rows,
                embeddings=np.stack(embs).astype(np.float32) if embs else None,
            )
            futures.append(await w._producer.send(w.topics.examples, value=batch.encode()))
        for f in futures:
            r = await f
            if isinstance(r, asyncio.Future):  # a dead-letter send task resolves to its delivery future
                await r
        if valid:
            m.examples_by_kind[KIND_ITEM].inc(len(valid))
            self.examples_acked += len(valid)
        if n_dead:
            m.dead_letters.inc(n_dead)
            self.dead_letters_acked += n_dead
            w.dead_letters_acked += n_dead


    async def _dead_letter(self, rec: Any, exc: InvalidItem) -> Any:
        headers = [
            ("reason", exc.reason.encode()),
            ("message", str(exc).encode("utf-8", "replace")[:1000]),
            ("field", (exc.field or "").encode()),
            ("source_topic", rec.topic.encode()),
            ("source_partition", str(rec.partition).encode()),
            ("source_offset", str(rec.offset).encode()),
        ]
        return await self.worker._producer.send(self.worker.topics.dead_letters, value=rec.value or b"", key=rec.key, headers=headers)


class _Holder:
    """Collects the dead-letter send tasks the worker's helpers append (they take a chunk)."""

    def __init__(self) -> None:
        self.dead_letters: list[Any] = []


def json_schema() -> dict[str, Any]:
    """JSON Schema of the contract (with the default limits), as committed in ``items.schema.json``."""
    schema = ItemRecord.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "reco item record"
    schema["description"] = (
        "Catalogue record an app publishes to the compacted items topic (key: item_id; newest record wins; a tombstone "
        "removes the item). Default limits shown; the service also enforces the configured description length, message "
        "size and updated_at window."
    )
    return schema


def write_schema(path: Path = SCHEMA_PATH) -> None:
    path.write_text(json.dumps(json_schema(), indent=2, sort_keys=True) + "\n")
