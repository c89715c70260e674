"""Shared fixtures: one embedded broker per test session, fresh topic prefixes per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from serving.settings import ServingSettings
from streamproc.broker import EmbeddedBroker
from streamproc.kafka import create_topics

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """The real embedded broker (Tansu) on a free loopback port, for the whole test session.

    With RECO_TEST_KAFKA_BOOTSTRAP set, tests use that cluster instead (nothing starts).
    """
    external = os.environ.get("RECO_TEST_KAFKA_BOOTSTRAP")
    if external:
        class _External:
            bootstrap = external
        yield _External()  # type: ignore[misc]
        return
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture
def settings(broker: EmbeddedBroker) -> ServingSettings:
    """ServingSettings pointing at the session broker, with a unique topic prefix; topics created."""
    s = ServingSettings(kafka_bootstrap=broker.bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:8]}.", partitions=4)
    create_topics(s)
    return s
