from __future__ import annotations

import json

import jsonschema
import pytest

from streamproc.errors import InvalidEvent
from streamproc.events import SCHEMA_PATH, EventValidator, json_schema
from streamproc.settings import Settings

NOW = 1_750_000_000.0
BASE = {"schema_version": 1, "event_id": "e1", "user_id": "u1", "item_id": "i1", "event_time": NOW - 10}


@pytest.fixture
def v() -> EventValidator:
    return EventValidator(Settings(), clock=lambda: NOW)


def raw(**kw: object) -> bytes:
    return json.dumps({**BASE, **kw}).encode()


@pytest.mark.parametrize(
    "event",
    [
        {"type": "click"},
        {"type": "rating", "rating": 0.5},
        {"type": "rating", "rating": 5},
        {"type": "comment", "text": "great"},
        {"type": "comment", "text": "great", "rating": 4.0},
    ],
)
def test_valid_events_parse(v: EventValidator, event: dict) -> None:
    ev = v.parse(raw(**event))
    assert ev.type == event["type"] and ev.user_id == "u1"
    assert json.loads(ev.to_json())["type"] == event["type"]


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_every_buffer_type_parse_accepts_is_parsed(v: EventValidator, wrap: type) -> None:
    # parse() is annotated to take memoryview; pydantic's JSON parser alone refuses one
    ev = v.parse(wrap(raw(type="rating", rating=4.0)))
    assert ev.type == "rating" and ev.user_id == "u1"


@pytest.mark.parametrize(
    "payload, field, reason",
    [
        (raw(type="rating"), "rating", "missing_field"),
        (raw(type="rating", rating="4"), "rating", "wrong_type"),
        (raw(type="rating", rating=9.0), "rating", "out_of_range"),
        (raw(type="rating", rating=0.0), "rating", "out_of_range"),
        (b'{"schema_version":1,"type":"rating","event_id":"e","user_id":"u","item_id":"i","event_time":1750000000,"rating":NaN}', "rating", "invalid_value"),
        (raw(type="click", user_id=""), "user_id", "invalid_value"),
        (raw(type="click", item_id="x" * 257), "item_id", "too_long"),
        (raw(type="click", user_id="a\u0001b"), "user_id", "invalid_value"),
        (raw(type="click", colour="red"), "colour", "extra_field"),
        (raw(type="click", event_time="yesterday"), "event_time", "wrong_type"),
        (raw(type="click", event_time=-5), "event_time", "out_of_range"),
        (raw(type="click", event_time=NOW + 10 * 86400), "event_time", "out_of_range"),
        (raw(type="comment", text=""), "text", "invalid_value"),
        (raw(type="comment", text="   "), "text", "invalid_value"),
        (raw(type="comment", text="x" * 5001), "text", "too_long"),
        (raw(type="purchase"), "type", "unknown_type"),
        (raw(type="click", schema_version=2), "schema_version", "invalid_value"),
        (b'{"type":"click"', None, "invalid_json"),
        (b"\xff\xfe{}", None, "invalid_utf8"),
        (b"[1,2]", None, "wrong_type"),
        (b"x" * 70_000, None, "too_large"),
    ],
)
def test_invalid_events_name_the_field(v: EventValidator, payload: bytes, field: str | None, reason: str) -> None:
    with pytest.raises(InvalidEvent) as err:
        v.parse(payload)
    assert err.value.reason == reason
    assert err.value.field == field
    if field:
        assert str(err.value).startswith(field)


def test_text_limit_is_configurable() -> None:
    v = EventValidator(Settings(max_text_chars=10), clock=lambda: NOW)
    with pytest.raises(InvalidEvent, match="text"):
        v.parse(raw(type="comment", text="x" * 11))
    assert v.parse(raw(type="comment", text="x" * 10)).text == "x" * 10


def test_rating_scale_is_configurable() -> None:
    v = EventValidator(Settings(rating_min=1, rating_max=10), clock=lambda: NOW)
    assert v.parse(raw(type="rating", rating=9.0)).rating == 9.0


def test_committed_schema_is_current() -> None:
    assert json.loads(SCHEMA_PATH.read_text()) == json_schema(), "run: python -c 'from streamproc.events import write_schema; write_schema()'"


def test_schema_agrees_with_validator_on_structure(v: EventValidator) -> None:
    schema = json_schema()
    jsonschema.validate(json.loads(raw(type="comment", text="ok", rating=3.0)), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(json.loads(raw(type="rating")), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(json.loads(raw(type="click", extra=1)), schema)
