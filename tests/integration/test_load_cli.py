"""``reco load`` and ``reco replay`` with the built-in demo data, against the real embedded broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from streamproc.events import EventValidator
from streamproc.kafka import read_all
from streamproc.settings import Settings
from streamproc.topics import Topics

pytestmark = pytest.mark.integration


def _reco(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECO_")}
    env.update(RECO_KAFKA_BOOTSTRAP=settings.kafka_bootstrap, RECO_TOPIC_PREFIX=settings.topic_prefix, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "streamproc.cli", *args], env=env, capture_output=True, text=True, timeout=120)


def test_load_publishes_rate_times_duration_valid_events_and_says_so(settings: Settings) -> None:
    out = _reco(settings, "load", "--rate", "1000", "--duration", "2", "--users", "30", "--items", "40", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    print({k: summary[k] for k in ("sent", "seconds", "events_per_s", "achieved_ratio")})
    assert summary["sent"] == 2000 and sum(summary["by_type"].values()) == 2000
    assert summary["bootstrap"] == settings.kafka_bootstrap and summary["interrupted"] is False
    assert "reco load: generated demo data: 30 users, 40 items" in out.stderr
    assert "events:" in out.stderr  # the progress bar
    msgs = read_all(settings, Topics.from_settings(settings).events)
    validator = EventValidator(settings)
    events = [validator.parse(m.value) for m in msgs]
    assert len(events) == 2000 and Counter(e.type for e in events) == Counter(summary["by_type"])
    assert all(m.key == e.user_id.encode() for m, e in zip(msgs, events, strict=True))  # keyed by user
    assert {e.user_id for e in events} <= {f"u{n}" for n in range(1, 31)}


def test_replay_without_a_dataset_publishes_demo_data(settings: Settings) -> None:
    out = _reco(settings, "replay", "--limit", "300", "-q", "--users", "10", "--items", "20")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["events"] == 300 and "demo data" in json.loads(out.stdout)["source"]
    assert len(read_all(settings, Topics.from_settings(settings).events)) == 300
