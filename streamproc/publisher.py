"""Publishing events for apps: validate, serialize, key by user, batch, flush, close.

Examples
--------
>>> with EventPublisher(settings) as pub:                         # doctest: +SKIP
...     pub.rating(user_id="u1", item_id="m42", rating=4.5)
...     pub.comment(user_id="u1", item_id="m42", text="loved the ending", rating=5.0)
>>> with ItemPublisher(settings) as items:                        # doctest: +SKIP
...     items.item(item_id="m42", title="Quiet Years (1990)", categories=["Drama"], available=True)
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from streamproc.errors import BrokerUnavailable, RecoError
from streamproc.events import SCHEMA_VERSION, EventValidator
from streamproc.items import ItemValidator
from streamproc.kafka import client_config
from streamproc.settings import Settings
from streamproc.topics import Topics

__all__ = ["EventPublisher", "ItemPublisher", "publish_items"]


class EventPublisher:
    """Synchronous producer of validated events (kafka-python), keyed by ``user_id``.

    Invalid events raise :class:`~streamproc.errors.InvalidEvent` before anything is sent.
    """

    def __init__(self, settings: Settings, *, linger_ms: int = 5, connect_timeout_s: float = 10.0, **producer_config: Any) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        self.settings = settings
        self.topic = Topics.from_settings(settings).events
        self.validator = EventValidator(settings)
        try:
            self._producer = KafkaProducer(
                linger_ms=linger_ms,
                batch_size=256 * 1024,
                max_request_size=settings.max_message_bytes,
                acks=1,
                bootstrap_timeout_ms=int(connect_timeout_s * 1000),
                **client_config(settings),
                **producer_config,
            )
        except KafkaError as exc:
            raise BrokerUnavailable(f"no Kafka broker reachable at {settings.kafka_bootstrap} ({exc})") from exc
        self.sent = 0

    def publish(self, event: dict[str, Any]) -> str:
        """Validate and send one event (dict following the contract); returns its ``event_id``.

        ``schema_version``, ``event_id`` (a UUID) and ``event_time`` (now) are filled in if absent.
        """
        event = {"schema_version": SCHEMA_VERSION, "event_id": uuid.uuid4().hex, "event_time": time.time(), **event}
        parsed = self.validator.parse_obj(event)
        self.send_raw(parsed.to_json(), parsed.user_id)
        return parsed.event_id

    def send_raw(self, value: bytes, user_id: str) -> None:
        """Send pre-serialized bytes without validation (for replays of already-valid data)."""
        try:
            self._producer.send(self.topic, value=value, key=user_id.encode())
        except Exception as exc:  # noqa: BLE001
            raise RecoError(f"could not send to {self.topic}: {exc}") from exc
        self.sent += 1

    def click(self, *, user_id: str, item_id: str, **kw: Any) -> str:
        return self.publish({"type": "click", "user_id": user_id, "item_id": item_id, **kw})

    def rating(self, *, user_id: str, item_id: str, rating: float, **kw: Any) -> str:
        return self.publish({"type": "rating", "user_id": user_id, "item_id": item_id, "rating": rating, **kw})

    def comment(self, *, user_id: str, item_id: str, text: str, rating: float | None = None, **kw: Any) -> str:
        event = {"type": "comment", "user_id": user_id, "item_id": item_id, "text": text, **kw}
        if rating is not None:
            event["rating"] = rating
        return self.publish(event)

    def flush(self, timeout: float | None = 30.0) -> None:
        from kafka.errors import KafkaTimeoutError

        try:
            self._producer.flush(timeout)
        except KafkaTimeoutError as exc:
            raise BrokerUnavailable(f"events not acknowledged by {self.settings.kafka_bootstrap} within {timeout} s") from exc

    def close(self) -> None:
        self.flush()
        self._producer.close()

    def __enter__(self) -> EventPublisher:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class ItemPublisher(EventPublisher):
    """Synchronous producer of validated item records (:mod:`streamproc.items`) to the compacted
    items topic, keyed by ``item_id``. Invalid records raise :class:`~streamproc.items.InvalidItem`
    before anything is sent; :meth:`remove` sends a tombstone (the item leaves the catalogue)."""

    def __init__(self, settings: Settings, **kw: Any) -> None:
        super().__init__(settings, **kw)
        self.topic = Topics.from_settings(settings).items
        self.item_validator = ItemValidator(settings)

    def publish(self, record: dict[str, Any]) -> str:
        """Validate and send one item record; ``updated_at`` (now) is filled in if absent. Returns the ``item_id``."""
        rec = self.item_validator.parse_obj(self.item_validator.complete(record))
        self.send_raw(rec.to_json(), rec.item_id)
        return rec.item_id

    def item(self, *, item_id: str, title: str, categories: list[str] | tuple[str, ...] = (), description: str | None = None,
             available: bool = True, **kw: Any) -> str:
        rec: dict[str, Any] = {"item_id": item_id, "title": title, "categories": list(categories), "available": available, **kw}
        if description is not None:
            rec["description"] = description
        return self.publish(rec)

    def __enter__(self) -> ItemPublisher:
        return self

    def remove(self, item_id: str) -> None:
        """A tombstone for ``item_id``: the catalogue forgets the item (compaction drops its records)."""
        if not item_id:
            raise ValueError("item_id: must not be empty")
        try:
            self._producer.send(self.topic, value=None, key=item_id.encode())
        except Exception as exc:  # noqa: BLE001
            raise RecoError(f"could not send to {self.topic}: {exc}") from exc
        self.sent += 1


def publish_items(settings: Settings, records: Iterable[dict[str, Any]], *, timeout_s: float = 60.0) -> int:
    """Validate and publish item records to the items topic (keyed by ``item_id``); returns how many.

    Invalid records raise :class:`~streamproc.items.InvalidItem` before anything is sent.
    """
    recs = list(records)
    if not recs:
        return 0
    with ItemPublisher(settings) as pub:
        for r in recs:
            pub.publish(r)
        pub.flush(timeout_s)
        return pub.sent
