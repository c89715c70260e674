"""The control-record contract (erasure requests): valid records round-trip; each invalid field,
an unknown field, an oversized record and non-JSON are refused with a reason naming the problem."""

from __future__ import annotations

import json
from typing import Any

import pytest

from streamproc.control import MAX_CONTROL_BYTES, ControlRecord, InvalidControl


def _raw(**over: Any) -> dict[str, Any]:
    rec = {"schema_version": 1, "action": "erase", "kind": "user", "id": "u-42", "erasure_id": "e-1", "requested_at": 1_700_000_000.5}
    rec.update(over)
    return {k: v for k, v in rec.items() if v is not _DROP}


_DROP = object()


@pytest.mark.parametrize("kind", ["user", "item"])
def test_valid_records_round_trip(kind: str) -> None:
    rec = ControlRecord.parse(json.dumps(_raw(kind=kind, id="a/b é")).encode())
    assert (rec.kind, rec.id, rec.erasure_id, rec.requested_at) == (kind, "a/b é", "e-1", 1_700_000_000.5)
    assert ControlRecord.parse(rec.to_json()) == rec and rec.key == "a/b é".encode()


def test_erase_builds_a_valid_record_with_fresh_ids() -> None:
    a, b = ControlRecord.erase("item", "m1"), ControlRecord.erase("item", "m1")
    assert a.erasure_id != b.erasure_id and a.requested_at > 0 and a.kind == "item"
    with pytest.raises(InvalidControl):
        ControlRecord.erase("shop", "m1")


@pytest.mark.parametrize("over, field, reason", [
    ({"schema_version": 2}, "schema_version", "schema_version"),
    ({"schema_version": True}, "schema_version", "schema_version"),
    ({"action": "delete"}, "action", "invalid_field"),
    ({"kind": "shop"}, "kind", "invalid_field"),
    ({"id": ""}, "id", "invalid_field"),
    ({"id": "x" * 257}, "id", "invalid_field"),
    ({"id": "a\nb"}, "id", "invalid_field"),
    ({"id": 42}, "id", "invalid_field"),
    ({"erasure_id": None}, "erasure_id", "invalid_field"),
    ({"requested_at": "now"}, "requested_at", "invalid_field"),
    ({"requested_at": -1}, "requested_at", "invalid_field"),
    ({"requested_at": True}, "requested_at", "invalid_field"),
    ({"id": _DROP}, "id", "missing_field"),
    ({"extra": 1}, "extra", "unknown_field"),
])
def test_each_invalid_field_is_named(over: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(InvalidControl) as err:
        ControlRecord.parse(json.dumps(_raw(**over)).encode())
    assert err.value.field == field and err.value.reason == reason and field in str(err.value)


@pytest.mark.parametrize("data, reason", [
    (b"not json", "invalid_json"),
    (b"[1, 2]", "invalid_json"),
    (None, "empty"),
    (json.dumps(_raw(erasure_id="e" * MAX_CONTROL_BYTES)).encode(), "too_large"),
])
def test_undecodable_empty_and_oversized_records(data: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidControl) as err:
        ControlRecord.parse(data)
    assert err.value.reason == reason
