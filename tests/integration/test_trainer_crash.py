"""``kill -9`` of a ``reco trainer`` process mid-stream, then a restart: every example of the
examples topic is accounted for in ``learned_ids.log``, and the model continues from its
checkpoint (versions move forward, prequential counts continue)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from streamproc.broker import free_port
from streamproc.examples import ExampleBatch
from streamproc.kafka import client_config, read_all
from streamproc.topics import Topics
from trainer.checkpoint import CheckpointStore
from trainer.settings import TrainerSettings
from trainer.updates import ModelUpdate

sys.path.insert(0, str(Path(__file__).parent))
from test_trainer import make_batch, wait_for  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BATCH = 25


def start_trainer(settings: TrainerSettings, ckdir: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "RECO_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "RECO_TOPIC_PREFIX": settings.topic_prefix,
           "RECO_CHECKPOINT_DIR": str(ckdir), "RECO_CHECKPOINT_INTERVAL_S": "0.5", "RECO_METRICS_PORT": str(free_port())}
    return subprocess.Popen([sys.executable, "-m", "streamproc.cli", "trainer"], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(log, "ab"))


class Stream:
    """Writes example batches to the examples topic at a steady pace until stopped."""

    def __init__(self, settings: TrainerSettings) -> None:
        from kafka import KafkaProducer

        self.producer = KafkaProducer(**client_config(settings))
        self.topic = Topics.from_settings(settings).examples
        self.sent = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set() and self.sent < 400 * BATCH:
            self.producer.send(self.topic, make_batch(self.sent, BATCH).encode())
            self.producer.flush()
            self.sent += BATCH
            time.sleep(0.02)

    def close(self) -> int:
        self.stop.set()
        self.thread.join(30)
        self.producer.close()
        return self.sent


def test_kill_9_mid_stream_then_restart_loses_nothing_and_continues(settings: TrainerSettings, tmp_path: Path) -> None:
    ckdir, log = tmp_path / "ck", tmp_path / "trainer.log"
    store = CheckpointStore(ckdir)
    stream = Stream(settings)
    proc = start_trainer(settings, ckdir, log)
    try:
        # mid-stream: a checkpoint with learned examples exists while examples keep coming
        before = wait_for(lambda: (ck := store.latest()) is not None and ck.info.get("examples_learned", 0) >= 5 * BATCH
                          and ck.version > 0 and ck, "a checkpoint with learned examples", timeout=120)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
        killed_at = store.latest()
        assert killed_at is not None
        proc = start_trainer(settings, ckdir, log)
        wait_for(lambda: stream.sent >= 60 * BATCH, "more of the stream")
        total = stream.close()
        wanted = {f"e{j}" for j in range(total)}
        wait_for(lambda: wanted <= set(store.learned_ids()), "every example id in learned_ids.log", timeout=120)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        stream.stop.set()
    text = log.read_text()
    assert f"restored checkpoint {killed_at.seq}" in text, text[-3000:]

    # every event id on the examples topic was learned (and logged)
    on_topic = [e for m in read_all(settings, Topics.from_settings(settings).examples) for e in ExampleBatch.decode(m.value).event_ids]
    assert len(on_topic) == total and set(on_topic) <= set(store.learned_ids())
    # only examples after the checkpoint the restart used were learned twice (bounded re-learning)
    ids = store.learned_ids()
    relearned = {i for i in set(ids) if ids.count(i) > 1}
    resumed_at = killed_at.offsets[f"{Topics.from_settings(settings).examples}:0"] * BATCH
    assert all(int(i[1:]) >= resumed_at for i in relearned)

    final = store.latest()
    assert final is not None and final.version > killed_at.version >= before.version
    assert final.info["examples_learned"] == total  # counts continued from the checkpoint, nothing twice
    preq = final.info["prequential"]
    assert preq["n_ratings"] + preq["n_clicks"] == total > killed_at.info["examples_learned"]

    # versions on the model-updates topic never went back or got reused across the crash
    topics = Topics.from_settings(settings)
    deltas = [ModelUpdate.decode(m.value).header.version for m in read_all(settings, topics.model_updates, idle_ms=1000)]
    assert deltas == sorted(deltas) and len(set(deltas)) == len(deltas)
    snaps = {ModelUpdate.decode(m.value).header.version for m in read_all(settings, topics.model_snapshots, idle_ms=1000)}
    assert max(deltas + list(snaps)) == final.version
