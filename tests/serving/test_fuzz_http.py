"""Poison input over HTTP: property-based fuzzing of ``POST /v1/events`` bodies and of the
recommendations endpoint's path and query string (starlette TestClient, no Kafka, a fake sink).

Whatever arrives — malformed JSON, wrong types, huge strings, deep nesting, invalid UTF-8,
NaN/Infinity, absurd timestamps, ids with control characters — the answer is a 2xx or a 4xx with a
machine-readable ``detail`` (or per-event ``errors`` by index), never a 5xx, and the valid events of
a batch are accepted and reach the sink (none lost).
"""

from __future__ import annotations

import json
import math
import time
import uuid
import warnings
from typing import Any

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

with warnings.catch_warnings():  # starlette nags about httpx in its test client; not ours
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from serving.app import create_app
from serving.bench import SyntheticModel
from serving.metrics import ServingMetrics
from serving.settings import ServingSettings
from serving.store import ModelStore

KEY = "fuzz-key"
HEADERS = {"X-API-Key": KEY, "content-type": "application/json"}
FUZZ = hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class Sink:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def __call__(self, topic: str, messages: list[Any]) -> None:
        self.sent.extend(value for _, value, _ in messages)


SETTINGS = ServingSettings(api_key=KEY, max_k=50, topic_prefix="fz.", max_body_bytes=200_000)
SINK = Sink()
_registry = CollectorRegistry()
_store = ModelStore(SETTINGS, ServingMetrics(_registry))
_store.apply(SyntheticModel(20, 100, 4).snapshot()[0].encode())
CLIENT = TestClient(create_app(SETTINGS, _store, start_kafka=False, registry=_registry, event_sink=SINK),
                    raise_server_exceptions=False)  # a bug must show as the 500 a client would see


def _check_response(r: Any) -> dict[str, Any]:
    assert r.status_code < 500, (r.status_code, r.text[:500])
    body = r.json()
    if r.status_code >= 400:
        assert isinstance(body.get("detail"), str) and body["detail"], body
    return body


def valid_event(n: int) -> dict[str, Any]:
    kind = ("rating", "click", "comment")[n % 3]
    ev: dict[str, Any] = {"type": kind, "event_id": f"ok-{uuid.uuid4().hex}", "user_id": f"u{n}", "item_id": f"i{n}",
                          "event_time": time.time()}
    if kind == "rating":
        ev["rating"] = 4.0
    if kind == "comment":
        ev["text"] = "fine film"
    return ev


# JSON-ish values, including what Python's json module emits/accepts beyond the standard.
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=50),
    st.text(alphabet=st.characters(max_codepoint=0x1F), max_size=10),  # control characters
    st.just("x" * 70_000),  # larger than max_event_bytes / max_text_chars
)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                           st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                           max_leaves=12)
FIELDS = ["type", "event_id", "user_id", "item_id", "event_time", "rating", "text", "schema_version"]
poison_events = st.one_of(
    json_values,
    # a valid event with one field replaced by something arbitrary, or removed
    st.builds(lambda n, f, v: {**valid_event(n), f: v}, st.integers(0, 2), st.sampled_from(FIELDS), json_values),
    st.builds(lambda n, f: {k: v for k, v in valid_event(n).items() if k != f}, st.integers(0, 2), st.sampled_from(FIELDS)),
    st.builds(lambda t: {**valid_event(0), "event_time": t},
              st.sampled_from([-1.0, 0.0, 1e300, -1e300, 2**63, time.time() + 10 * 86_400, "yesterday"])),
    st.builds(lambda s: {**valid_event(1), "user_id": s}, st.text(alphabet=st.characters(max_codepoint=0x9F), min_size=0, max_size=30)),
)


@FUZZ
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_5xx(body: bytes) -> None:
    _check_response(CLIENT.post("/v1/events", content=body, headers=HEADERS))


@FUZZ
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 2), poison_events), max_size=12), st.booleans())
def test_mixed_batch_valid_events_all_accepted_poison_rejected_by_index(items: list[tuple[bool, int, Any]], wrapped: bool) -> None:
    batch: list[Any] = []
    valid_ids: list[str] = []
    for is_valid, n, poison in items:
        if is_valid:
            ev = valid_event(n)
            valid_ids.append(ev["event_id"])
            batch.append(ev)
        else:
            batch.append(poison)
    payload = json.dumps({"events": batch} if wrapped else batch)  # NaN/Infinity as Python writes them
    before = len(SINK.sent)
    r = CLIENT.post("/v1/events", content=payload.encode(), headers=HEADERS)
    body = _check_response(r)
    if r.status_code == 413:  # the huge strings can push a batch over max_body_bytes: all or nothing
        assert len(payload) > SETTINGS.max_body_bytes and len(SINK.sent) == before
        return
    assert r.status_code in (202, 400), body
    accepted, errors = body["accepted"], body["errors"]
    assert set(valid_ids) <= set(accepted)  # none of the valid events lost
    assert len(accepted) + len(errors) == len(batch)
    indices = [e["index"] for e in errors]
    assert len(set(indices)) == len(indices) and all(0 <= i < len(batch) for i in indices)
    valid_at = {n for n, ev in enumerate(batch) if isinstance(ev, dict) and ev.get("event_id") in valid_ids}
    assert not valid_at & set(indices)
    for e in errors:  # a machine-readable reason for each rejected event
        assert isinstance(e["reason"], str) and e["reason"] and "message" in e
    published = [json.loads(v)["event_id"] for v in SINK.sent[before:]]
    assert published == accepted


def test_deep_nesting_invalid_utf8_nan_and_empty_bodies_are_4xx() -> None:
    cases = [
        b"[" * 100_000 + b"]" * 100_000,  # deeper than the JSON parser's recursion limit
        b'{"events": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'[{"type": "rating", "user_id": "\xff\xfe", "item_id": "i", "rating": 4}]',  # invalid UTF-8
        b"\xef\xbb\xbf[]",  # UTF-8 BOM
        b"", b"null", b"{}", b"[]", b'"events"', b"NaN", b"[NaN]",
        json.dumps([{"type": "rating", "user_id": "u", "item_id": "i", "rating": math.nan}]).encode(),
        json.dumps([{"type": "rating", "user_id": "u", "item_id": "i", "rating": math.inf}]).encode(),
        json.dumps([{"type": "rating", "user_id": "u", "item_id": "i", "rating": 4, "event_time": -math.inf}]).encode(),
        json.dumps([{"type": "rating", "user_id": "u", "item_id": "i", "rating": 4, "event_time": 10**400}]).encode(),
        json.dumps([{"type": "click", "user_id": "u\x00\x1b[31m", "item_id": "i\n"}]).encode(),
        json.dumps([{"type": "comment", "user_id": "u", "item_id": "i", "text": "x" * 150_000}]).encode(),
    ]
    for body in cases:
        r = CLIENT.post("/v1/events", content=body, headers=HEADERS)
        out = _check_response(r)
        empty_batch = body.lstrip(b"\xef\xbb\xbf") == b"[]"  # nothing sent, nothing to reject
        assert 400 <= r.status_code < 500 or (r.status_code == 202 and (out["accepted"] or empty_batch)), (body[:80], r.status_code, out)
    # a body over max_body_bytes is refused before it is parsed
    r = CLIENT.post("/v1/events", content=b"[" + b" " * 300_000 + b"]", headers=HEADERS)
    assert r.status_code == 413 and r.json()["detail"] == "body_too_large"


path_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60)


@FUZZ
@given(path_text, st.one_of(st.text(max_size=30), st.integers(-(10**20), 10**20).map(str), st.just("NaN"), st.just("1e3")),
       st.one_of(st.text(max_size=10), st.sampled_from(["true", "false", "1", "0"])))
def test_recommendation_query_never_5xx(user: str, k: str, exclude_seen: str) -> None:
    r = CLIENT.get(f"/v1/users/{_quote(user)}/recommendations", params={"k": k, "exclude_seen": exclude_seen})
    body = _check_response(r)
    if r.status_code == 200:
        assert 1 <= len(body["items"]) <= 50 and body["version"] >= 1
    elif user in (".", ".."):
        # a dot segment the client resolves away: /v1/users/recommendations is DELETE /v1/users/{id}
        assert r.status_code in (404, 405), (r.status_code, body)
    else:
        assert r.status_code in (400, 404), (r.status_code, body)


@FUZZ
@given(st.binary(max_size=300))
def test_raw_query_strings_never_5xx(raw: bytes) -> None:
    from urllib.parse import quote_from_bytes

    r = CLIENT.get("/v1/users/u1/recommendations?" + quote_from_bytes(raw, safe="=&"))
    _check_response(r)


def _quote(s: str) -> str:
    from urllib.parse import quote

    return quote(s, safe="")
