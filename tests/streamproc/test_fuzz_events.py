"""Poison input: whatever bytes arrive, the validator returns an event or raises InvalidEvent with a
bounded reason — never another exception (which would kill a stream worker)."""

from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from streamproc.errors import InvalidEvent
from streamproc.events import EventValidator
from streamproc.settings import Settings

REASONS = {"invalid_json", "invalid_utf8", "missing_field", "extra_field", "wrong_type", "invalid_value",
           "unknown_type", "too_long", "too_large", "out_of_range"}
V = EventValidator(Settings(), clock=lambda: 1_750_000_000.0)
GOOD = {"schema_version": 1, "type": "rating", "event_id": "e", "user_id": "u", "item_id": "i",
        "event_time": 1_700_000_000.0, "rating": 4.0}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=300),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=20), children, max_size=5),
    max_leaves=30,
)


def _check(raw: bytes) -> None:
    try:
        ev = V.parse(raw)
    except InvalidEvent as exc:
        assert exc.reason in REASONS, exc.reason
        assert str(exc)
        return
    # accepted: it must really satisfy the contract
    assert 1 <= len(ev.user_id) <= 256 and math.isfinite(ev.event_time)
    assert all(ord(c) >= 32 and ord(c) != 127 for c in ev.user_id + ev.item_id + ev.event_id)


@given(st.binary(max_size=2000))
@hsettings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_arbitrary_bytes(raw: bytes) -> None:
    _check(raw)


@given(st.dictionaries(st.sampled_from(sorted(GOOD) + ["text", "extra"]), json_values, max_size=9))
@hsettings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_structured_mutations(fields: dict) -> None:
    raw = json.dumps({**GOOD, **fields}, allow_nan=True).encode()
    _check(raw)


@given(st.sampled_from(sorted(GOOD)), json_values)
@hsettings(max_examples=300, deadline=None)
def test_one_field_replaced(field: str, value: object) -> None:
    _check(json.dumps({**GOOD, field: value}, allow_nan=True).encode())


def test_pathological_inputs() -> None:
    for raw in [
        b"[" * 100_000 + b"]" * 100_000,              # deep nesting
        json.dumps({**GOOD, "user_id": "x" * 1_000_000}).encode(),  # huge string
        json.dumps({**GOOD, "event_time": -1e308}).encode(),
        json.dumps({**GOOD, "event_time": 1e308}).encode(),
        json.dumps({**GOOD, "user_id": "a\nb"}).encode(),
        json.dumps({**GOOD, "rating": True}).encode(),
        b"\x00" * 10, b"", b"null", b"1e999",
        '{"type":"rating","user_id":"\ud800"}'.encode("utf-8", "surrogatepass"),
    ]:
        _check(raw)
