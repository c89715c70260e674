"""Foundation against the real embedded broker: topics, publish round trip, replay, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamproc.errors import InvalidEvent
from streamproc.kafka import create_topics, read_all
from streamproc.publisher import EventPublisher
from streamproc.replay import load_events, replay
from streamproc.settings import Settings
from streamproc.topics import Topics

pytestmark = pytest.mark.integration


def test_topic_creation_is_idempotent_with_explicit_partitions(settings: Settings) -> None:
    again = create_topics(settings)
    t = Topics.from_settings(settings)
    assert not any(r["created"] for r in again.values())
    assert again[t.events]["partitions"] == 4 and again[t.examples]["partitions"] == 1


def test_publish_round_trip_keyed_by_user(settings: Settings) -> None:
    with EventPublisher(settings) as pub:
        ids = [pub.rating(user_id=f"u{n % 3}", item_id=f"i{n}", rating=3.5) for n in range(30)]
        with pytest.raises(InvalidEvent, match="rating"):
            pub.rating(user_id="u", item_id="i", rating=99)
    msgs = read_all(settings, Topics.from_settings(settings).events)
    assert sorted(json.loads(m.value)["event_id"] for m in msgs) == sorted(ids)
    partitions_by_user: dict[bytes, set[int]] = {}
    for m in msgs:
        partitions_by_user.setdefault(m.key, set()).add(m.partition)
    assert all(len(p) == 1 for p in partitions_by_user.values())


def _tiny_dataset(tmp: Path) -> Path:
    (tmp / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,10,4.0,964982703\n1,20,3.5,964982224\n2,10,5.0,964983000\n")
    (tmp / "tags.csv").write_text("userId,movieId,tag,timestamp\n1,10,funny,964982800\n2,30,dark,964982100\n")
    return tmp


def test_replay_publishes_ratings_and_comments_in_time_order(settings: Settings, tmp_path: Path) -> None:
    events = load_events(_tiny_dataset(tmp_path))
    assert [e[0] for e in events] == sorted(e[0] for e in events)
    res = replay(settings, events, progress=False)
    assert res.events == 5
    got = [json.loads(m.value) for m in read_all(settings, Topics.from_settings(settings).events)]
    comments = {e["item_id"]: e for e in got if e["type"] == "comment"}
    assert comments["10"]["rating"] == 4.0 and comments["10"]["text"] == "funny"
    assert "rating" not in comments["30"]  # user 2 never rated movie 30
    assert sum(e["type"] == "rating" for e in got) == 3


def _reco(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RECO_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "RECO_TOPIC_PREFIX": settings.topic_prefix}
    return subprocess.run([sys.executable, "-m", "streamproc.cli", *args], env=env, capture_output=True, text=True, timeout=120)


def test_cli_publish_valid_and_invalid(settings: Settings) -> None:
    ok = _reco(settings, "publish", "rating", "--user", "u1", "--item", "m1", "--rating", "4")
    assert ok.returncode == 0, ok.stderr
    bad = _reco(settings, "publish", "rating", "--user", "u1", "--item", "m1", "--rating", "11")
    assert bad.returncode != 0 and "rating" in bad.stderr and "outside the rating scale" in bad.stderr
    bad = _reco(settings, "publish", "comment", "--user", "u1", "--item", "m1")
    assert bad.returncode != 0 and "text" in bad.stderr
    assert len(read_all(settings, Topics.from_settings(settings).events)) == 1


def test_cli_topics_create_reports(settings: Settings) -> None:
    out = _reco(settings, "topics", "create")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[Topics.from_settings(settings).events]["partitions"] == 4


def test_unreachable_broker_is_a_clear_error() -> None:
    from streamproc.broker import free_port
    from streamproc.errors import BrokerUnavailable

    with pytest.raises(BrokerUnavailable, match="no Kafka broker"):
        EventPublisher(Settings(kafka_bootstrap=f"127.0.0.1:{free_port()}"), connect_timeout_s=1.5)
