"""``reco`` commands contributed by the trainer package: ``reco trainer``."""

from __future__ import annotations

import argparse
import logging
import time

from trainer.settings import TrainerSettings

__all__ = ["register"]

log = logging.getLogger("reco.trainer")


def _cmd_trainer(args: argparse.Namespace, settings: TrainerSettings) -> int:
    from prometheus_client import start_http_server

    from streamproc.broker import wait_for_kafka
    from streamproc.kafka import create_topics
    from streamproc.runtime import client_settings, metrics_port, stop_on_signals
    from trainer.model import warm_up
    from trainer.worker import TrainerWorker

    settings = client_settings(settings)
    stop = stop_on_signals("finishing the batch, publishing a final delta, checkpointing", logger=log)
    wait_for_kafka(settings.kafka_bootstrap, 30, **settings.kafka_client_config())
    create_topics(settings)  # idempotent; the trainer may start before the stream workers
    # compile the learning kernels before /metrics answers (what `reco demo` waits for): on a fresh
    # clone numba compiles them once (~10-20 s on 2 cores), and events must not queue behind that
    t0 = time.perf_counter()
    warm_up(settings)
    log.info("learning kernels ready in %.1f s", time.perf_counter() - t0)
    port = metrics_port(settings, "trainer")
    server, _ = start_http_server(port, addr=settings.metrics_host)
    log.info("trainer /metrics on http://%s:%d/metrics, checkpoints in %s", settings.metrics_host, port, settings.checkpoint_dir)
    try:
        return TrainerWorker(settings).run(stop)
    finally:
        server.shutdown()


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add ``reco trainer`` (the benchmarks register themselves: ``trainer/bench/``)."""
    p = commands.add_parser(
        "trainer", help="learn from the examples topic and publish model updates (one active per group, others stand by)")
    p.set_defaults(func=_cmd_trainer)
