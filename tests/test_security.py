"""Security basics: the API key (constant-time check) on writes and optionally reads, request
limits, Kafka security settings reaching every client the code builds, no secrets in logs."""

from __future__ import annotations

import ast
import hmac
import os
import signal
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from serving.app import create_app
from serving.bench import SyntheticModel
from serving.metrics import ServingMetrics
from serving.settings import ServingSettings
from serving.store import ModelStore
from streamproc.broker import free_port
from streamproc.kafka import client_config

ROOT = Path(__file__).resolve().parents[1]
KEY = "k-" + uuid.uuid4().hex
EVENT = {"type": "rating", "user_id": "u1", "item_id": "i1", "rating": 4.0}


class Sink:
    def __init__(self) -> None:
        self.n = 0

    async def __call__(self, topic: str, messages: list[Any]) -> None:
        self.n += len(messages)


def _client(**kw: Any) -> tuple[TestClient, Sink]:
    settings = ServingSettings(topic_prefix="sec.", **{"api_key": KEY, **kw})
    registry = CollectorRegistry()
    store = ModelStore(settings, ServingMetrics(registry))
    store.apply(SyntheticModel(10, 30, 4).snapshot()[0].encode())
    sink = Sink()
    return TestClient(create_app(settings, store, start_kafka=False, registry=registry, event_sink=sink)), sink


def test_writes_need_the_api_key_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    client, sink = _client()
    with client:
        assert client.post("/v1/events", json=[EVENT]).status_code == 401
        assert client.post("/v1/events", json=[EVENT], headers={"X-API-Key": KEY[:-1]}).status_code == 401
        r = client.post("/v1/events", json=[EVENT], headers={"X-API-Key": KEY})
        assert r.status_code == 202 and len(r.json()["accepted"]) == 1
        assert client.get("/v1/users/u1/recommendations").status_code == 200  # reads open by default
    assert sink.n == 1  # only the authorised write was published
    assert (KEY[:-1].encode(), KEY.encode()) in calls and (KEY.encode(), KEY.encode()) in calls


def test_no_key_configured_refuses_writes() -> None:
    client, sink = _client(api_key="")
    with client:
        r = client.post("/v1/events", json=[EVENT], headers={"X-API-Key": ""})
    assert r.status_code == 403 and r.json()["detail"] == "writes_disabled" and sink.n == 0


def test_read_api_key_required() -> None:
    client, _ = _client(read_api_key_required=True)
    with client:
        assert client.get("/v1/users/u1/recommendations").json()["detail"] == "unauthorized"
        assert client.get("/v1/users/u1/recommendations", headers={"X-API-Key": "nope"}).status_code == 401
        assert client.get("/v1/users/u1/recommendations", headers={"X-API-Key": KEY}).status_code == 200


def test_body_and_k_limits() -> None:
    client, sink = _client(max_body_bytes=4096, max_k=20)
    with client:
        big = [EVENT] * 200
        r = client.post("/v1/events", json=big, headers={"X-API-Key": KEY})
        assert r.status_code == 413 and r.json()["detail"] == "body_too_large"

        def chunks() -> Any:  # no content-length: the stream is cut at the limit
            for _ in range(100):
                yield b" " * 1000

        r = client.post("/v1/events", content=chunks(), headers={"X-API-Key": KEY})
        assert r.status_code == 413
        assert client.get("/v1/users/u1/recommendations", params={"k": 21}).json()["detail"] == "k_out_of_range"
        assert client.get("/v1/users/u1/recommendations", params={"k": 20}).status_code == 200
    assert sink.n == 0


# ---------------------------------------------------------------------- Kafka client security
KAFKA_CLIENTS = {"KafkaConsumer", "KafkaProducer", "KafkaAdminClient", "AIOKafkaProducer", "AIOKafkaConsumer"}


def _is_client_config_call(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in ("client_config", "kafka_client_config")


def test_every_kafka_client_gets_the_security_settings() -> None:
    """Static check: every Kafka client constructed in streamproc/trainer/serving gets
    ``**client_config(...)`` (directly or through a local assigned from it)."""
    found, bad = [], []
    for pkg in ("streamproc", "trainer", "serving"):
        for path in (ROOT / pkg).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for fn in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
                from_config = {t.id for a in ast.walk(fn) if isinstance(a, ast.Assign) and _is_client_config_call(a.value)
                               for t in a.targets if isinstance(t, ast.Name)}
                kwargs_param = fn.args.kwarg.arg if fn.args.kwarg else None
                for call in ast.walk(fn):
                    if not (isinstance(call, ast.Call) and getattr(call.func, "id", getattr(call.func, "attr", None)) in KAFKA_CLIENTS):
                        continue
                    where = f"{path.relative_to(ROOT)}:{call.lineno}"
                    found.append(where)
                    spread = [k.value for k in call.keywords if k.arg is None]
                    ok = any(_is_client_config_call(v) or (isinstance(v, ast.Name) and (v.id in from_config or v.id == kwargs_param))
                             for v in spread)
                    if not ok:
                        bad.append(where)
    assert len(set(found)) >= 10, found  # the check really sees the clients
    assert not bad, f"Kafka clients without **client_config(...): {bad}"
    # the one pass-through (**kwargs) helper is only called with the settings' security config
    callers = [line for pkg in ("streamproc", "trainer", "serving")
               for p in (ROOT / pkg).glob("*.py") for line in p.read_text().splitlines() if "wait_for_kafka(settings" in line]
    assert callers and all("**settings.kafka_client_config()" in line for line in callers), callers


def test_client_config_carries_sasl_and_ssl(tmp_path: Path) -> None:
    import ssl

    ca = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
    s = ServingSettings(kafka_bootstrap="broker:9093", kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                 kafka_sasl_username="svc", kafka_sasl_password="pw", kafka_ssl_cafile=str(ca))
    cfg = client_config(s)
    assert cfg == {"bootstrap_servers": "broker:9093", "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                   "sasl_plain_username": "svc", "sasl_plain_password": "pw", "ssl_cafile": str(ca)}
    if ca.exists():
        aio = client_config(s, aio=True)
        assert isinstance(aio["ssl_context"], ssl.SSLContext) and "ssl_cafile" not in aio
        assert aio["sasl_plain_password"] == "pw" and aio["security_protocol"] == "SASL_SSL"
    # and the clients accept these arguments (constructing an aiokafka client does not connect)
    import asyncio

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    async def build() -> None:
        for cls in (AIOKafkaProducer, AIOKafkaConsumer):
            cls(**client_config(s, aio=True))

    if ca.exists():
        asyncio.run(build())


# ---------------------------------------------------------------------- no secrets in logs
@pytest.mark.integration
def test_no_secrets_in_role_logs(broker: Any) -> None:
    """``reco serve`` and ``reco streamproc`` run with a unique API key and SASL password (SASL against a
    broker that does not speak it, so connection errors are logged too): neither secret is printed."""
    api_key, password = "APIKEY-" + uuid.uuid4().hex, "SASLPW-" + uuid.uuid4().hex
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECO_")}
    env.update(RECO_KAFKA_BOOTSTRAP=broker.bootstrap, RECO_API_KEY=api_key, RECO_KAFKA_SASL_PASSWORD=password,
               RECO_KAFKA_SASL_USERNAME="svc", RECO_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT", RECO_HTTP_PORT=str(port),
               RECO_TOPIC_PREFIX=f"sec{uuid.uuid4().hex[:6]}.", RECO_METRICS_PORT=str(free_port()), HF_HUB_OFFLINE="1",
               PYTHONUNBUFFERED="1")
    procs = {role: subprocess.Popen([sys.executable, "-m", "streamproc.cli", role], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT) for role in ("serve", "streamproc")}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and procs["serve"].poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        while time.monotonic() < deadline and procs["streamproc"].poll() is None:  # it gives up on the broker
            time.sleep(0.3)
    finally:
        outs = {}
        for role, p in procs.items():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            try:
                outs[role] = p.communicate(timeout=30)[0].decode("utf-8", "replace")
            except subprocess.TimeoutExpired:
                p.kill()
                outs[role] = p.communicate()[0].decode("utf-8", "replace")
    for role, out in outs.items():
        assert out.strip(), f"{role} logged nothing"
        assert api_key not in out and password not in out, f"{role} leaked a secret:\n{out[-3000:]}"
