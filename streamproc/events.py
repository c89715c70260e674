"""The app event contract: what apps publish to the events topic.

Three event types share an envelope (``schema_version``, ``type``, ``event_id``, ``user_id``,
``item_id``, ``event_time``):

``click``    the user clicked/viewed the item (implicit feedback).
``rating``   an explicit ``rating`` on the configured scale (default 0.5 – 5.0).
``comment``  free ``text`` about the item, optionally with the ``rating`` that came with it (a review).

``event_time`` is Unix seconds (float) of when it happened in the app. The time the event was
*published* is the Kafka record timestamp; feedback latency is measured from that.

Structure (types, required fields, id lengths) is checked by the pydantic models below, which also
generate ``events.schema.json`` for apps in other languages. Settings-dependent limits (rating
scale, text length, time window, message size) are checked by :class:`EventValidator`.

Examples
--------
>>> v = EventValidator(Settings())
>>> ev = v.parse(b'{"schema_version":1,"type":"rating","event_id":"e1","user_id":"u1",'
...              b'"item_id":"i1","event_time":1700000000,"rating":4.5}')
>>> ev.rating
4.5
>>> v.parse(b'{"schema_version":1,"type":"rating","event_id":"e1","user_id":"u1",'
...         b'"item_id":"i1","event_time":1700000000,"rating":9}')
Traceback (most recent call last):
...
streamproc.errors.InvalidEvent: rating: 9.0 is outside the rating scale [0.5, 5.0]
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from streamproc.errors import InvalidEvent
from streamproc.settings import Settings

__all__ = [
    "SCHEMA_VERSION",
    "EVENT_TYPES",
    "ClickEvent",
    "RatingEvent",
    "CommentEvent",
    "Event",
    "EventValidator",
    "json_schema",
    "SCHEMA_PATH",
    "write_schema",
    "event_dict",
]

SCHEMA_VERSION = 1
EVENT_TYPES = ("click", "rating", "comment")
SCHEMA_PATH = Path(__file__).with_name("events.schema.json")


def event_dict(type: str, user_id: str, item_id: str, *, event_id: str | None = None, event_time: float | None = None,
               **fields: Any) -> dict[str, Any]:
    """An app event as its JSON object, ``schema_version`` set (the one place a producer writes it):
    ``event_id`` a new UUID and ``event_time`` now unless given; ``fields`` (``rating``, ``text``)
    follow. Not validated: the benches build invalid events with it too.

    >>> event_dict("rating", "u1", "m1", event_id="e1", event_time=0.0, rating=4.5)
    {'schema_version': 1, 'type': 'rating', 'event_id': 'e1', 'user_id': 'u1', 'item_id': 'm1', 'event_time': 0.0, 'rating': 4.5}
    """
    return {"schema_version": SCHEMA_VERSION, "type": type, "event_id": uuid.uuid4().hex if event_id is None else event_id,
            "user_id": user_id, "item_id": item_id, "event_time": time.time() if event_time is None else event_time, **fields}

# Printable ids: no control characters, 1..256 characters.
Id = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")]
Text = Annotated[str, Field(min_length=1, max_length=5000, description="Comment text (limit configurable, default 5000)")]


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)

    schema_version: Literal[1] = Field(description="Version of this contract")
    event_id: Id = Field(description="Unique id of the event; used for de-duplication")
    user_id: Id
    item_id: Id
    event_time: float = Field(description="Unix seconds when it happened in the app")

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class ClickEvent(_Envelope):
    """Implicit feedback: the user clicked or viewed the item."""

    type: Literal["click"]


class RatingEvent(_Envelope):
    """Explicit feedback on the configured rating scale."""

    type: Literal["rating"]
    rating: float = Field(description="Rating value on the configured scale (default 0.5 - 5.0)")


class CommentEvent(_Envelope):
    """Free text about the item, optionally with the rating it came with (a review)."""

    type: Literal["comment"]
    text: Text
    rating: float | None = Field(default=None, description="Rating given with the comment, if any")


Event = Annotated[ClickEvent | RatingEvent | CommentEvent, Field(discriminator="type")]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(Event)

_REASONS = {
    "json_invalid": "invalid_json",
    "json_type": "invalid_json",
    "union_tag_invalid": "unknown_type",
    "union_tag_not_found": "missing_field",
    "missing": "missing_field",
    "extra_forbidden": "extra_field",
    "finite_number": "invalid_value",
    "string_pattern_mismatch": "invalid_value",
    "string_too_short": "invalid_value",
    "string_too_long": "too_long",
    "too_long": "too_long",
    "literal_error": "invalid_value",
    "dict_type": "wrong_type",
    "model_type": "wrong_type",
}


def json_bytes(obj: Any, error: type[InvalidEvent]) -> bytes:
    """``obj`` (an already-decoded JSON value) as JSON bytes, or ``error`` naming why it cannot be."""
    try:
        return json.dumps(obj, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise error(f"not representable as JSON: {exc}", reason="invalid_value") from None
    except RecursionError:
        raise error("JSON nested too deeply", reason="invalid_json") from None


def validation_reason(err: Any) -> str:
    """The ``reason`` label (dead-letter header, metric) of one pydantic validation error."""
    etype = err["type"]
    if etype == "json_invalid" and "unicode" in err["msg"].lower():
        return "invalid_utf8"
    return _REASONS.get(etype, "wrong_type" if etype.endswith("_type") or etype.endswith("_parsing") else "invalid_value")


def _from_validation_error(exc: ValidationError) -> InvalidEvent:
    err = exc.errors(include_url=False)[0]
    loc = [str(p) for p in err["loc"]]
    if loc and loc[0] in EVENT_TYPES:  # drop the union tag from the location
        loc = loc[1:]
    field = ".".join(loc) or None
    etype = err["type"]
    reason = validation_reason(err)
    msg = err["msg"]
    if etype == "union_tag_invalid":
        field, msg = "type", f"unknown event type; expected one of {', '.join(EVENT_TYPES)}"
    elif etype == "union_tag_not_found":
        field, msg = "type", "field required"
    return InvalidEvent(f"{field}: {msg}" if field else msg, reason=reason, field=field)


class EventValidator:
    """Parses raw bytes (or dicts) into events and enforces the settings-dependent limits.

    Raises :class:`~streamproc.errors.InvalidEvent` with a ``reason`` label and the field name.
    """

    def __init__(self, settings: Settings, *, clock: Any = time.time) -> None:
        self.settings = settings
        self.clock = clock

    def parse(self, raw: bytes | bytearray | memoryview) -> ClickEvent | RatingEvent | CommentEvent:
        if raw is None:
            raise InvalidEvent("empty message (no value)", reason="invalid_json")
        if len(raw) > self.settings.max_event_bytes:
            raise InvalidEvent(
                f"message is {len(raw)} bytes, larger than the limit {self.settings.max_event_bytes}",
                reason="too_large",
            )
        data = bytes(raw)  # the same object for bytes; pydantic's JSON parser takes no memoryview
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidEvent(f"message is not valid UTF-8 ({exc.reason} at byte {exc.start})", reason="invalid_utf8") from None
        try:
            event = _ADAPTER.validate_json(data)
        except ValidationError as exc:
            raise _from_validation_error(exc) from None
        except RecursionError:  # pathological nesting
            raise InvalidEvent("JSON nested too deeply", reason="invalid_json") from None
        return self.check(event)

    def parse_obj(self, obj: Any) -> ClickEvent | RatingEvent | CommentEvent:
        """Validate an already-decoded JSON value (e.g. one element of an HTTP batch)."""
        return self.parse(json_bytes(obj, InvalidEvent))

    def check(self, event: Any) -> Any:
        s = self.settings
        rating = getattr(event, "rating", None)
        if rating is not None and not (s.rating_min <= rating <= s.rating_max):
            raise InvalidEvent(
                f"rating: {rating!r} is outside the rating scale [{s.rating_min}, {s.rating_max}]",
                reason="out_of_range",
                field="rating",
            )
        text = getattr(event, "text", None)
        if text is not None:
            if len(text) > s.max_text_chars:
                raise InvalidEvent(f"text: {len(text)} characters, more than the limit {s.max_text_chars}", reason="too_long", field="text")
            if not text.strip():
                raise InvalidEvent("text: is blank", reason="invalid_value", field="text")
        t = event.event_time
        if t < s.min_event_time:
            raise InvalidEvent(f"event_time: {t!r} is before {s.min_event_time} (Unix seconds)", reason="out_of_range", field="event_time")
        if t > self.clock() + s.max_future_s:
            raise InvalidEvent(f"event_time: {t!r} is more than {s.max_future_s} s in the future", reason="out_of_range", field="event_time")
        return event


def json_schema() -> dict[str, Any]:
    """JSON Schema of the contract (with the default limits), as committed in ``events.schema.json``."""
    schema = _ADAPTER.json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "reco event"
    schema["description"] = (
        "Event an app publishes to the events topic (key: user_id). Default limits shown; the service "
        "also enforces the configured rating scale, text length, message size and event-time window."
    )
    return schema


def write_schema(path: Path = SCHEMA_PATH) -> None:
    path.write_text(json.dumps(json_schema(), indent=2, sort_keys=True) + "\n")
