"""The item-record contract: valid records, each invalid field, oversize, unknown fields, the schema."""

from __future__ import annotations

import json
import time

import jsonschema
import pytest

from streamproc.items import SCHEMA_PATH, InvalidItem, ItemValidator, catalog_records, item_text, json_schema
from streamproc.settings import Settings

NOW = time.time()
BASE = {"item_id": "m1", "title": "Heat (1995)", "categories": ["Action", "Crime"], "description": "A heist thriller in LA.",
        "available": True, "updated_at": NOW - 10}


def raw(**kw: object) -> bytes:
    rec = {**BASE, **kw}
    return json.dumps({k: v for k, v in rec.items() if v is not ...}).encode()


@pytest.fixture
def v() -> ItemValidator:
    return ItemValidator(Settings())


def test_valid_record_round_trips(v: ItemValidator) -> None:
    rec = v.parse(raw())
    assert (rec.item_id, rec.title, rec.categories, rec.available) == ("m1", "Heat (1995)", ("Action", "Crime"), True)
    assert v.parse(rec.to_json()) == rec


def test_optional_fields_have_defaults(v: ItemValidator) -> None:
    rec = v.parse(raw(categories=..., description=..., available=...))
    assert rec.categories == () and rec.description is None and rec.available is True
    assert v.parse(raw(available=False, categories=[])).available is False


@pytest.mark.parametrize(
    ("data", "field", "reason"),
    [
        (raw(item_id=...), "item_id", "missing_field"),
        (raw(item_id=""), "item_id", "invalid_value"),
        (raw(item_id="a\nb"), "item_id", "invalid_value"),
        (raw(item_id="x" * 257), "item_id", "too_long"),
        (raw(item_id=7), "item_id", "wrong_type"),
        (raw(title=...), "title", "missing_field"),
        (raw(title=""), "title", "invalid_value"),
        (raw(title="   "), "title", "invalid_value"),
        (raw(title="t" * 501), "title", "too_long"),
        (raw(title=["Heat"]), "title", "wrong_type"),
        (raw(categories="Action"), "categories", "wrong_type"),
        (raw(categories=["Action", ""]), "categories.1", "invalid_value"),
        (raw(categories=["Action", 3]), "categories.1", "wrong_type"),
        (raw(categories=["c" * 101]), "categories.0", "too_long"),
        (raw(categories=[f"c{i}" for i in range(33)]), "categories", "too_long"),
        (raw(description=""), "description", "invalid_value"),
        (raw(description="  \n "), "description", "invalid_value"),
        (raw(description=5), "description", "wrong_type"),
        (raw(available="yes"), "available", "wrong_type"),
        (raw(available=1), "available", "wrong_type"),
        (raw(updated_at=...), "updated_at", "missing_field"),
        (raw(updated_at="2020-01-01"), "updated_at", "wrong_type"),
        (raw(updated_at=100.0), "updated_at", "out_of_range"),
        (raw(updated_at=NOW + 10 * 86_400), "updated_at", "out_of_range"),
        (raw(schema_version=2), "schema_version", "invalid_value"),
        (raw(price=3), "price", "extra_field"),
    ],
)
def test_each_invalid_field_is_named(v: ItemValidator, data: bytes, field: str, reason: str) -> None:
    with pytest.raises(InvalidItem) as info:
        v.parse(data)
    assert (info.value.field, info.value.reason) == (field, reason), str(info.value)
    assert str(info.value).startswith(field)


@pytest.mark.parametrize(("data", "reason"), [(b"{not json", "invalid_json"), (b"[1]", "wrong_type"), (b"\xff\xfe", "invalid_utf8"),
                                              (None, "invalid_json")])
def test_malformed_messages(v: ItemValidator, data: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidItem) as info:
        v.parse(data)
    assert info.value.reason == reason


def test_oversize_message_and_description_limits() -> None:
    small = ItemValidator(Settings(max_event_bytes=1000, max_text_chars=50))
    with pytest.raises(InvalidItem) as info:
        small.parse(raw(description="d" * 2000))
    assert info.value.reason == "too_large" and "1000" in str(info.value)
    with pytest.raises(InvalidItem) as info:
        small.parse(raw(description="d" * 60))
    assert (info.value.field, info.value.reason) == ("description", "too_long")


def test_parse_obj_and_complete_fill_updated_at(v: ItemValidator) -> None:
    rec = v.parse_obj(v.complete({"item_id": "x", "title": "X"}, now=NOW))
    assert rec.updated_at == NOW
    with pytest.raises(InvalidItem, match="not representable"):
        v.parse_obj({**BASE, "updated_at": float("nan")})


def test_committed_schema_is_current() -> None:
    assert json.loads(SCHEMA_PATH.read_text()) == json_schema(), "run: python -c 'from streamproc.items import write_schema; write_schema()'"


def test_schema_agrees_with_validator_on_structure() -> None:
    schema = json_schema()
    jsonschema.validate(json.loads(raw()), schema)
    for bad in (raw(price=1), raw(title=...), raw(categories="x"), raw(available="yes")):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(json.loads(bad), schema)


def test_item_text_and_catalog_records() -> None:
    v = ItemValidator(Settings())
    rec = v.parse(raw())
    assert item_text(rec) == "Heat (1995). Action, Crime. A heist thriller in LA."
    recs = catalog_records({"items": {"1": {"title": "Toy Story (1995)", "category": "Animation", "description": "Toys."},
                                      "2": {"title": "Heat", "categories": ["Action", "Crime"]}, "3": {"title": "Nothing", "category": ""}}},
                           updated_at=NOW)
    parsed = [v.parse_obj(r) for r in recs]  # every generated record follows the contract
    assert [p.categories for p in parsed] == [("Animation",), ("Action", "Crime"), ()]
    assert parsed[0].description == "Toys."
