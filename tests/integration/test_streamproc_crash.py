"""A stream worker killed with SIGKILL loses nothing: its successor resumes from committed offsets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from test_streamproc import Examples, wait_for

from streamproc.examples import ExampleBatch
from streamproc.kafka import read_all
from streamproc.publisher import EventPublisher
from streamproc.settings import Settings
from streamproc.topics import Topics

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_killed_worker_loses_nothing_its_successor_resumes_from_committed_offsets(settings: Settings) -> None:
    env = {**os.environ, "RECO_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "RECO_TOPIC_PREFIX": settings.topic_prefix,
           "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "streamproc.cli", "streamproc", "--no-metrics"]

    def publish(prefix: str, n: int) -> set[str]:
        with EventPublisher(settings) as pub:
            return {pub.click(user_id=f"u{i % 50}", item_id="m", event_id=f"{prefix}{i}") for i in range(n)}

    expected = publish("k", 5000)
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ex = Examples(settings)
    try:
        ex.until(1, timeout=90)
    finally:
        first.kill()  # SIGKILL mid-stream: no drain, no final commit
        first.wait()
    expected |= publish("after", 500)  # only the successor can produce these
    second = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: expected <= set(ex.poll()), timeout=120, what="every event in the examples topic after the restart")
        second.send_signal(signal.SIGTERM)
        _, err = second.communicate(timeout=60)
        assert second.returncode == 0, err
    finally:
        if second.poll() is None:
            second.kill()
            second.communicate()
        ex.close()
    ids = [e for m in read_all(settings, Topics.from_settings(settings).examples) for e in ExampleBatch.decode(m.value).event_ids]
    assert set(ids) == expected  # at-least-once: redelivered ones may repeat, none is missing
