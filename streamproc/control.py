"""The control-record contract: erasure requests on the control topic (``{prefix}control``).

One JSON object per Kafka message, keyed by the id it names (UTF-8)::

    {"schema_version": 1, "action": "erase", "kind": "user" | "item", "id": "<user or item id>",
     "erasure_id": "<unique id of the request>", "requested_at": <Unix s>}

``DELETE /v1/users/{id}`` and ``DELETE /v1/items/{id}`` publish one such record and answer 202
with it once the broker has acknowledged it; any Kafka client may publish the same record. The
trainer applies records in topic order: the id's rows leave the model and the next model update
and checkpoint. The *erasure time* is the record's Kafka timestamp: training examples of that id
whose source event was published at or before it are dropped even when they reach the trainer
later; events published after it start a fresh profile.

Validation is strict (unknown fields, wrong types, empty or control-character ids and oversized
records are refused) and names the offending field; the trainer sends a refused record's bytes to
the dead-letter topic with headers ``reason``, ``message``, ``field`` and the source position.

Examples
--------
>>> rec = ControlRecord.erase("user", "u1", requested_at=1.0, erasure_id="e1")
>>> ControlRecord.parse(rec.to_json()) == rec
True
>>> ControlRecord.parse(b'{"schema_version": 1, "action": "erase", "kind": "shop", "id": "x", "erasure_id": "e", "requested_at": 1}')
Traceback (most recent call last):
...
streamproc.control.InvalidControl: kind: must be 'user' or 'item', got 'shop'
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from streamproc.errors import InvalidEvent

__all__ = ["ControlRecord", "InvalidControl", "CONTROL_SCHEMA_VERSION", "MAX_CONTROL_BYTES", "KINDS"]

CONTROL_SCHEMA_VERSION = 1
MAX_CONTROL_BYTES = 4096
KINDS = ("user", "item")
_FIELDS = ("schema_version", "action", "kind", "id", "erasure_id", "requested_at")
_ID = re.compile(r"^[^\x00-\x1f\x7f]{1,256}$")  # the event contract's id rule


class InvalidControl(InvalidEvent):
    """A control record violates the contract (``reason``: bounded label; ``field``: the field)."""


def _check_id(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise InvalidControl(f"{name}: must be a string, got {type(value).__name__}", reason="invalid_field", field=name)
    if not _ID.match(value):
        raise InvalidControl(f"{name}: must be 1..256 printable characters, got {value[:40]!r}", reason="invalid_field", field=name)
    return value


@dataclass(frozen=True)
class ControlRecord:
    """One erasure request (see the module docstring for the wire format)."""

    kind: str
    id: str
    erasure_id: str
    requested_at: float
    action: str = "erase"

    @classmethod
    def erase(cls, kind: str, id: str, *, requested_at: float | None = None, erasure_id: str | None = None) -> ControlRecord:
        """A validated erasure request for a ``"user"`` or ``"item"`` id."""
        rec = cls(kind, id, erasure_id or uuid.uuid4().hex, time.time() if requested_at is None else float(requested_at))
        return cls.parse(rec.to_json())

    @property
    def key(self) -> bytes:
        return self.id.encode()

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": CONTROL_SCHEMA_VERSION, "action": self.action, "kind": self.kind, "id": self.id,
                "erasure_id": self.erasure_id, "requested_at": self.requested_at}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def parse(cls, data: bytes | None) -> ControlRecord:
        """Decode and validate one record; raises :class:`InvalidControl` naming what is wrong."""
        if data is None:
            raise InvalidControl("empty record (tombstone)", reason="empty")
        if len(data) > MAX_CONTROL_BYTES:
            raise InvalidControl(f"record is {len(data)} bytes, the limit is {MAX_CONTROL_BYTES}", reason="too_large")
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise InvalidControl("not valid JSON", reason="invalid_json") from None
        if not isinstance(obj, dict):
            raise InvalidControl(f"must be a JSON object, got {type(obj).__name__}", reason="invalid_json")
        unknown = sorted(set(obj) - set(_FIELDS))
        if unknown:
            raise InvalidControl(f"{unknown[0]}: unknown field", reason="unknown_field", field=unknown[0])
        for name in _FIELDS:
            if name not in obj:
                raise InvalidControl(f"{name}: required", reason="missing_field", field=name)
        if obj["schema_version"] != CONTROL_SCHEMA_VERSION or isinstance(obj["schema_version"], bool):
            raise InvalidControl(f"schema_version: must be {CONTROL_SCHEMA_VERSION}, got {obj['schema_version']!r}",
                                 reason="schema_version", field="schema_version")
        if obj["action"] != "erase":
            raise InvalidControl(f"action: must be 'erase', got {str(obj['action'])[:40]!r}", reason="invalid_field", field="action")
        if obj["kind"] not in KINDS:
            raise InvalidControl(f"kind: must be 'user' or 'item', got {str(obj['kind'])[:40]!r}", reason="invalid_field", field="kind")
        at = obj["requested_at"]
        if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at) or at < 0:
            raise InvalidControl(f"requested_at: must be a finite number of Unix seconds, got {str(at)[:40]!r}",
                                 reason="invalid_field", field="requested_at")
        return cls(obj["kind"], _check_id(obj["id"], "id"), _check_id(obj["erasure_id"], "erasure_id"), float(at))


def publish(settings: Any, rec: ControlRecord, *, timeout_s: float = 30.0) -> float:
    """Publish ``rec`` on the control topic and wait for the broker's acknowledgement; returns the
    record's Kafka timestamp (Unix s)."""
    from kafka import KafkaProducer

    from streamproc.kafka import client_config
    from streamproc.topics import Topics

    producer = KafkaProducer(acks="all", linger_ms=0, **client_config(settings))
    try:
        meta = producer.send(Topics.from_settings(settings).control, key=rec.key, value=rec.to_json()).get(timeout=timeout_s)
    finally:
        producer.close(5)
    return meta.timestamp / 1000.0 if meta.timestamp and meta.timestamp > 0 else time.time()


def _cmd_erase(args: Any, settings: Any) -> int:
    """``reco erase user|item ID``: the same record ``DELETE /v1/users|items/{id}`` publishes."""
    from streamproc.runtime import client_settings, print_json

    rec = ControlRecord.erase(args.kind, args.id)
    s = client_settings(settings)
    at = publish(s, rec)
    print_json({"status": "accepted", "erasure_id": rec.erasure_id, "kind": rec.kind, f"{rec.kind}_id": rec.id,
                "requested_at": rec.requested_at, "acknowledged_at": time.time(), "record_timestamp": at})
    return 0


def register(commands: Any, bench: Any) -> None:
    """Add ``reco erase user|item ID`` (``reco.commands`` entry point)."""
    p = commands.add_parser("erase", help="erase a user or an item (a record on the control topic; README: Erasure)")
    p.add_argument("kind", choices=KINDS, help="user or item")
    p.add_argument("id", help="the user_id or item_id to erase")
    p.set_defaults(func=_cmd_erase)
