"""``reco streamproc`` as a process: examples out, /metrics served, SIGTERM -> clean exit 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request

import pytest
from test_streamproc import Examples, wait_for

from streamproc.broker import free_port
from streamproc.publisher import EventPublisher
from streamproc.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_reco_streamproc_serves_metrics_and_exits_cleanly_on_sigterm(settings: Settings) -> None:
    port = free_port()
    env = {**os.environ, "RECO_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "RECO_TOPIC_PREFIX": settings.topic_prefix,
           "RECO_METRICS_PORT": str(port), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "streamproc.cli", "streamproc"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with EventPublisher(settings) as pub:
            for i in range(20):
                pub.rating(user_id=f"u{i}", item_id="m1", rating=3.0)
        ex = Examples(settings)
        ex.until(20, timeout=90)
        ex.close()

        def scraped() -> str:
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                return ""

        wait_for(lambda: 'reco_streamproc_examples_produced_total{kind="rating"} 20.0' in scraped(), what="/metrics")
        assert "reco_streamproc_consumer_lag_messages" in scraped()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
