"""Fixtures for the deploy tests: the metrics catalog, promtool, a real Prometheus."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import prom  # noqa: E402
from metrics_catalog import DEPLOY, ROOT, Metric, load_catalog  # noqa: E402,F401

SKIP_NO_PROMTOOL = "promtool not installed (run `bash deploy/system-deps.sh`: Debian package `prometheus`)"


@pytest.fixture(scope="session")
def catalog() -> dict[str, Metric]:
    """The metrics catalog parsed from docs/metrics.md."""
    return load_catalog()


@pytest.fixture(scope="session")
def promtool() -> str:
    """Path of promtool; skips the test with a clear reason if it is not installed."""
    path = shutil.which("promtool")
    if path is None:
        pytest.skip(SKIP_NO_PROMTOOL)
    return path


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    """Path of the prometheus server binary; skips if missing."""
    path = shutil.which("prometheus")
    if path is None:
        pytest.skip("prometheus not installed (run `bash deploy/system-deps.sh`: Debian package `prometheus`)")
    return path


@pytest.fixture
def prometheus(prometheus_bin: str, tmp_path: Path):
    """Factory: ``prometheus(config_dict) -> base URL`` of a real Prometheus, stopped after the test."""
    procs = []

    def start(config: dict) -> str:
        port = prom.free_port()
        path = prom.write_config(config, tmp_path / f"prometheus-{port}.yml")
        procs.append(prom.start_prometheus(path, port, tmp_path / f"data-{port}"))
        return f"http://127.0.0.1:{port}"

    yield start
    for p in procs:
        prom.stop(p)
