"""Erasure end to end on the embedded broker, with the real roles as processes (two serving
replicas): DELETE a user → unknown on both replicas (cold-start answer, seen list gone), absent
from the bytes of the newest snapshot messages and of the checkpoint files, no more pushes, a late
event published before the acknowledgement does not bring the user back, a later one starts a
fresh profile; DELETE an item → never served again, absent from snapshot and checkpoint bytes."""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from support import poll

from serving.bench.erasure import checkpoint_holds
from serving.ops.loop import running_loop
from serving.settings import ServingSettings
from streamproc.broker import free_port
from streamproc.kafka import client_config, read_all
from streamproc.publisher import EventPublisher
from streamproc.topics import Topics
from trainer.updates import peek

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEY = "erasure-test-key"
VICTIM = "victim-3b9f0e"  # distinctive ids: a byte search cannot hit them by accident
ITEM = "item-erased-7c1d42"


@pytest.fixture(scope="module")
def loop() -> Iterator[tuple[ServingSettings, list[str], str, io.StringIO]]:
    http, http2, trainer_metrics = free_port(), free_port(), free_port()
    settings = ServingSettings(api_key=KEY, http_port=http, topic_prefix=f"er{uuid.uuid4().hex[:6]}.", checkpoint_interval_s=2.0,
                        snapshot_interval_s=5.0, push_min_interval_s=0.0)
    roles = {"streamproc": ["streamproc"], "trainer": ["trainer"], "serve-1": ["serve"], "serve-2": ["serve"]}
    role_env = {"streamproc": {"RECO_METRICS_PORT": str(free_port())}, "trainer": {"RECO_METRICS_PORT": str(trainer_metrics)},
                "serve-2": {"RECO_HTTP_PORT": str(http2)}}
    log = io.StringIO()
    with running_loop(settings, log=log, roles=roles, role_env=role_env) as (s, sup):
        bases = [f"http://127.0.0.1:{http}", f"http://127.0.0.1:{http2}"]
        for b in bases:
            poll(lambda b=b: _ok(f"{b}/healthz"), 120, f"{b}/healthz", 0.3)
        import random

        rng = random.Random(3)
        with EventPublisher(s) as pub:
            for _ in range(1200):
                pub.publish(_rating(f"u{rng.randrange(40)}", f"i{rng.randrange(60)}", rng.choice([2.0, 3.0, 4.0, 5.0])))
            for n in range(40):  # the item to erase: liked by everyone, so it is served a lot
                pub.publish(_rating(f"u{n}", ITEM, 5.0))
            for j in range(6):
                pub.publish(_rating(VICTIM, f"i{j}", 5.0))
        try:
            poll(lambda: all(_known(b, VICTIM) for b in bases), 120, "the victim known on both replicas", 0.3)
            poll(lambda: checkpoint_holds(s.checkpoint_dir, VICTIM.encode()), 60, "the victim in the newest checkpoint", 0.3)
        except (AssertionError, TimeoutError):
            print(log.getvalue()[-5000:])
            raise
        yield s, bases, f"http://127.0.0.1:{trainer_metrics}/metrics", log
        codes = sup.stop()
    assert all(c == 0 for c in codes.values()), (codes, log.getvalue()[-3000:])


def _rating(user: str, item: str, rating: float) -> dict[str, Any]:
    return {"type": "rating", "user_id": user, "item_id": item, "rating": rating}


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _rec(base: str, user: str, k: int = 10) -> dict[str, Any]:
    return httpx.get(f"{base}/v1/users/{user}/recommendations", params={"k": k}, timeout=5).json()


def _known(base: str, user: str) -> bool:
    return not _rec(base, user).get("fallback", True)


def _metric(url: str, name: str) -> float:
    text = httpx.get(url, timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " ") or line.startswith(name + "{"))


def _snapshot_after_expiry(s: ServingSettings, kind: str, id_: str) -> list[bytes] | None:
    """Every chunk of the newest complete snapshot of the model after the delta that expired
    ``id_`` (its version or a later one; None: no such snapshot yet)."""
    expired_at: int | None = None
    snaps: dict[int, dict[int, tuple[int, bytes]]] = {}
    topics = Topics.from_settings(s)
    for m in read_all(s, topics.model_updates, idle_ms=700):
        h = peek(m.value)
        if id_ in (h.expired_user_ids if kind == "user" else h.expired_item_ids):
            expired_at = h.version
    for m in read_all(s, topics.model_snapshots, idle_ms=700):
        h = peek(m.value)
        snaps.setdefault(h.version, {})[h.chunk] = (h.chunks, m.value)
    if expired_at is None:
        return None
    complete = [v for v, chunks in snaps.items() if v >= expired_at and len(chunks) == next(iter(chunks.values()))[0]]
    return [raw for _, raw in snaps[max(complete)].values()] if complete else None


def test_erase_a_user_everywhere_then_an_item(loop: tuple[ServingSettings, list[str], str, io.StringIO]) -> None:
    from kafka import KafkaProducer

    s, bases, trainer_metrics, log = loop
    topics = Topics.from_settings(s)
    assert httpx.delete(f"{bases[0]}/v1/users/{VICTIM}", timeout=10).status_code == 401  # the key is required
    r = httpx.delete(f"{bases[0]}/v1/users/{VICTIM}", headers={"X-API-Key": KEY}, timeout=10)
    assert r.status_code == 202, r.text
    t_ack = time.time()
    assert r.json()["user_id"] == VICTIM and r.json()["erasure_id"]

    def gone_everywhere() -> bool:
        for b in bases:
            body, cold = _rec(b, VICTIM), _rec(b, f"never-seen-{uuid.uuid4().hex[:6]}")
            # cold start, and the same answer as a stranger's: the seen list (items i0..i5) is gone too
            if not body["fallback"] or body["items"] != cold["items"]:
                return False
        return True

    poll(gone_everywhere, 30, "the victim unknown on both replicas", 0.1)
    t_gone = time.time()
    poll(lambda: checkpoint_holds(s.checkpoint_dir, VICTIM.encode()) is False, 30, "the victim out of the checkpoint files", 0.1)
    snapshot = poll(lambda: _snapshot_after_expiry(s, "user", VICTIM), 30, "a snapshot after the erasure", 0.5)
    assert all(VICTIM.encode() not in raw for raw in snapshot)
    assert any("u3" in peek(raw).user_ids for raw in snapshot)  # the other users are all there

    # an event published before the acknowledgement, arriving only now, cannot resurrect the user
    producer = KafkaProducer(**client_config(s))
    late = _rating(VICTIM, "i7", 5.0) | {"schema_version": 1, "event_id": f"late-{uuid.uuid4().hex}", "event_time": t_ack - 1}
    producer.send(topics.events, key=VICTIM.encode(), value=json.dumps(late).encode(), timestamp_ms=int((t_ack - 0.5) * 1000))
    producer.flush()
    poll(lambda: _metric(trainer_metrics, "reco_trainer_erasure_dropped_examples_total") >= 1, 60, "the late example dropped", 0.3)
    with EventPublisher(s) as pub:  # a marker learned after the drop: once the replicas know it, they hold every later update
        pub.publish(_rating("marker-1", "i1", 4.0))
    poll(lambda: all(_known(b, "marker-1") for b in bases), 60, "a model update after the drop on both replicas", 0.2)
    assert all(_rec(b, VICTIM)["fallback"] for b in bases)
    assert checkpoint_holds(s.checkpoint_dir, VICTIM.encode()) is False

    # no push for the victim after it was gone
    pushes = [m for m in read_all(s, topics.recommendations, idle_ms=700) if m.key == VICTIM.encode()]
    assert all(json.loads(m.value).get("created", 0) <= t_gone for m in pushes), pushes

    # the item: served before, never after, nowhere in the snapshot or checkpoint
    assert any(ITEM in [i["item_id"] for i in _rec(bases[0], f"u{n}", 20)["items"]] + [i["item_id"] for i in _rec(bases[0], "nobody", 20)["items"]]
               for n in range(40))
    assert httpx.delete(f"{bases[1]}/v1/items/{ITEM}", headers={"X-API-Key": KEY}, timeout=10).status_code == 202

    def item_gone() -> bool:
        return all(ITEM not in [i["item_id"] for i in _rec(b, u, 60)["items"]] for b in bases for u in ("u1", "u2", "u7", "nobody"))

    poll(item_gone, 30, "the item in no answer", 0.2)
    poll(lambda: checkpoint_holds(s.checkpoint_dir, ITEM.encode()) is False, 30, "the item out of the checkpoint files", 0.2)
    snapshot = poll(lambda: _snapshot_after_expiry(s, "item", ITEM), 30, "a snapshot after the item erasure", 0.5)
    assert all(ITEM.encode() not in raw for raw in snapshot)
    with EventPublisher(s) as pub:  # more feedback on other items: the erased one stays out
        for n in range(40):
            pub.publish(_rating(f"u{n}", f"i{n}", 4.0))
        pub.publish(_rating("marker-2", "i1", 4.0))  # once both replicas know it, later updates have reached them
    poll(lambda: all(_known(b, "marker-2") for b in bases), 60, "the new feedback on both replicas", 0.2)
    assert item_gone()

    # after the erasure (+ 1 s clock slack) the same id starts a fresh profile
    producer.send(topics.events, key=VICTIM.encode(), value=json.dumps(
        _rating(VICTIM, "i9", 5.0) | {"schema_version": 1, "event_id": f"new-{uuid.uuid4().hex}", "event_time": time.time()}).encode())
    producer.flush()
    producer.close()
    poll(lambda: all(_known(b, VICTIM) for b in bases), 60, "the victim's fresh profile on both replicas", 0.3)
    assert _metric(trainer_metrics, "reco_trainer_erasures_total") == 2


def test_reco_erase_publishes_the_control_record(settings: ServingSettings, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from streamproc.cli import main
    from streamproc.control import ControlRecord

    monkeypatch.setenv("RECO_KAFKA_BOOTSTRAP", settings.kafka_bootstrap)
    monkeypatch.setenv("RECO_TOPIC_PREFIX", settings.topic_prefix)
    assert main(["erase", "item", "m/42"]) == 0
    ack = json.loads(capsys.readouterr().out)
    [msg] = read_all(settings, Topics.from_settings(settings).control, idle_ms=500)
    rec = ControlRecord.parse(msg.value)
    assert (rec.kind, rec.id, rec.erasure_id, msg.key) == ("item", "m/42", ack["erasure_id"], b"m/42")
    assert main(["erase", "user", "bad\x01id"]) == 2
    assert "id" in capsys.readouterr().err
