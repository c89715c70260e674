"""``reco demo`` as a newcomer runs it: no dataset anywhere, a fixed duration, a clean exit with
the URLs printed and the built-in demo data published."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from streamproc.broker import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_runs_on_built_in_data_and_exits_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECO_")}
    env.update(HF_HUB_OFFLINE="1", RECO_HTTP_PORT=str(port), RECO_TOPIC_PREFIX=f"demo{uuid.uuid4().hex[:6]}.")
    log = tmp_path / "roles.log"
    # cwd: an empty directory, so nothing beside it either
    out = subprocess.run([sys.executable, "-m", "streamproc.cli", "demo", "--duration", "15", "--users", "50", "--items", "80",
                          "--log-file", str(log)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:], log.read_text()[-3000:])
    base = f"http://127.0.0.1:{port}"
    for url in (f"{base}/try", f"{base}/dashboard", f"{base}/v1/users/u1/recommendations"):
        assert url in out.stdout, out.stdout
    assert "publishing generated demo data: 50 users, 80 items, seed 42" in out.stdout
    published = re.search(r"published ([\d,]+) events", out.stdout)
    assert published and int(published.group(1).replace(",", "")) > 0, out.stdout[-2000:]
    assert re.search(r"\[\s+\d+ s\] \d[\d,]* events/s in", out.stdout), out.stdout[-2000:]  # the live summary moved
    assert "Traceback" not in out.stdout + out.stderr + log.read_text()
