"""Run a real Prometheus (the Debian ``prometheus`` binary) for tests, and query it.

Reusable by any test that needs to see what Prometheus scrapes::

    proc = start_prometheus(config_path, port, data_dir)
    try:
        samples = wait_for(f"http://127.0.0.1:{port}", "up == 1", timeout=30)
    finally:
        stop(proc)

Examples
--------
>>> scrape_config("job", ["127.0.0.1:1234"], interval="1s")["scrape_configs"][0]["static_configs"]
[{'targets': ['127.0.0.1:1234']}]
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape_config(job: str, targets: list[str], interval: str = "1s", metrics_path: str = "/metrics") -> dict[str, Any]:
    """A minimal Prometheus config scraping ``targets`` every ``interval`` (write it as YAML/JSON)."""
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [{"job_name": job, "metrics_path": metrics_path, "static_configs": [{"targets": targets}]}],
    }


def write_config(config: dict[str, Any], path: Path) -> Path:
    """Write ``config`` as YAML (JSON is valid YAML, so no YAML library is needed)."""
    path.write_text(json.dumps(config, indent=2))
    return path


def start_prometheus(config_path: str | Path, port: int, data_dir: str | Path | None = None, timeout: float = 30.0,
                     extra_args: list[str] | None = None) -> subprocess.Popen:
    """Start ``prometheus`` on ``127.0.0.1:port`` with ``config_path``; return once ``/-/ready`` answers.

    The TSDB goes to ``data_dir`` (a fresh temporary directory if None, removed by :func:`stop`).
    Logs go to ``<data_dir>/prometheus.log``; a start-up failure raises ``RuntimeError`` with them.
    """
    own_dir = data_dir is None
    data = Path(tempfile.mkdtemp(prefix="prom-") if own_dir else data_dir)
    data.mkdir(parents=True, exist_ok=True)
    log = open(data / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={data / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
            *(extra_args or []),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    proc.data_dir = data  # type: ignore[attr-defined]
    proc.own_dir = own_dir  # type: ignore[attr-defined]
    proc.log_file = log  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{port}/-/ready"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return proc
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    stop(proc)
    raise RuntimeError(f"prometheus did not become ready on :{port}: {(data / 'prometheus.log').read_text()[-3000:]}")


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop a Prometheus started by :func:`start_prometheus` (SIGTERM, then SIGKILL) and clean up."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log = getattr(proc, "log_file", None)
    if log is not None:
        log.close()
    if getattr(proc, "own_dir", False):
        shutil.rmtree(proc.data_dir, ignore_errors=True)  # type: ignore[attr-defined]


def query(url: str, expr: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Instant query ``expr`` against the Prometheus at ``url``; returns ``data.result``.

    Each element is ``{"metric": {labels}, "value": [ts, "string value"]}`` for a vector result.
    Raises ``RuntimeError`` if Prometheus reports an error (e.g. a PromQL syntax error).
    """
    full = f"{url.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(full, timeout=timeout) as r:
            body = json.load(r)
    except urllib.error.HTTPError as exc:
        body = json.load(exc)
    if body.get("status") != "success":
        raise RuntimeError(f"query {expr!r} failed: {body.get('errorType')}: {body.get('error')}")
    return body["data"]["result"]


def wait_for(url: str, expr: str, timeout: float = 30.0, interval: float = 0.25) -> list[dict[str, Any]]:
    """Poll ``query(url, expr)`` until it returns a non-empty result; raise ``TimeoutError`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        last = query(url, expr)
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"no result for {expr!r} within {timeout} s")


def _get(url: str, path: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(f"{url.rstrip('/')}{path}", timeout=timeout) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{path}: {body}")
    return body["data"]


def rules(url: str) -> dict[str, dict[str, Any]]:
    """Alerting and recording rules the server loaded: rule name -> rule (``health``, ``state``, ``query`` …)."""
    return {r["name"]: r for g in _get(url, "/api/v1/rules")["groups"] for r in g["rules"]}


def alerts(url: str) -> list[dict[str, Any]]:
    """Active alerts (pending and firing), each with ``labels``, ``annotations`` and ``state``."""
    return _get(url, "/api/v1/alerts")["alerts"]


def values(result: list[dict[str, Any]]) -> dict[tuple[tuple[str, str], ...], float]:
    """Vector result → {sorted label items: float value}, handy for assertions."""
    return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in result}
