"""Settings: the core class and the role sections (trainer, serving), as every role loads them at start-up."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from serving.settings import ServingSettings
from streamproc.errors import ConfigError
from streamproc.settings import Settings, markdown_table, program_settings, sections
from trainer.settings import TrainerSettings

ROLES = [Settings, TrainerSettings, ServingSettings]  # what `reco streamproc` / `reco trainer` / `reco serve` read


def test_defaults_load() -> None:
    s = Settings.load(env={})
    assert s.kafka_bootstrap == "" and s.partitions == 4 and s.topic_prefix == "reco."


def test_env_overrides_and_types() -> None:
    s = ServingSettings.load(env={"RECO_PARTITIONS": "8", "RECO_PUSH_ENABLED": "false", "RECO_LEARNING_RATE": "0.1"})
    assert (s.partitions, s.push_enabled, s.learning_rate) == (8, False, 0.1)


@pytest.mark.parametrize("cls, env, want", [
    (Settings, {"RECO_PARTITIONS": "8", "RECO_TOPIC_PREFIX": "x."}, {"partitions": 8, "topic_prefix": "x."}),
    (TrainerSettings, {"RECO_FACTORS": "8", "RECO_REPLAY_POLICY": "per_user", "RECO_PARTITIONS": "2"},
     {"factors": 8, "replay_policy": "per_user", "partitions": 2}),
    (ServingSettings, {"RECO_MAX_K": "50", "RECO_API_KEY": "k", "RECO_FACTORS": "16", "RECO_COMPRESSION": "lz4"},
     {"max_k": 50, "api_key": "k", "factors": 16, "compression": "lz4"}),
])
def test_each_section_loads_from_env(cls: type[Settings], env: dict[str, str], want: dict[str, object]) -> None:
    s = cls.load(env=env)
    assert type(s) is cls
    assert {name: getattr(s, name) for name in want} == want


def test_sections_hold_their_roles_settings_only() -> None:
    core = {f.name for f in dataclasses.fields(Settings)}
    trainer = {f.name for f in dataclasses.fields(TrainerSettings)} - core
    serving = {f.name for f in dataclasses.fields(ServingSettings)} - core - trainer
    assert {"factors", "checkpoint_dir", "rank_mf", "seed"} <= trainer and not trainer & {"api_key", "max_k"}
    assert {"api_key", "max_k", "push_enabled", "dashboard_sources"} <= serving
    assert {"kafka_bootstrap", "topic_prefix", "kafka_sasl_password", "max_event_bytes", "snapshot_interval_s"} <= core
    assert not core & {"factors", "api_key"}
    with pytest.raises(TypeError):
        Settings(api_key="k")  # type: ignore[call-arg]


@pytest.mark.parametrize("cls", ROLES)
@pytest.mark.parametrize(
    "env, needle",
    [
        ({"RECO_PARTITIONS": "eight"}, "RECO_PARTITIONS='eight'"),
        ({"RECO_PARTITIONS": "0"}, "RECO_PARTITIONS=0"),
        ({"RECO_LEARNING_RATE": "nan"}, "RECO_LEARNING_RATE='nan'"),
        ({"RECO_PUSH_ENABLED": "maybe"}, "RECO_PUSH_ENABLED='maybe'"),
        ({"RECO_REPLAY_POLICY": "lifo"}, "RECO_REPLAY_POLICY='lifo'"),
        ({"RECO_MAX_K": "0"}, "RECO_MAX_K=0"),
        ({"RECO_FACTORS": "4096"}, "RECO_FACTORS=4096"),
        ({"RECO_PARTITONS": "4"}, "RECO_PARTITONS"),
        ({"RECO_RATING_MIN": "5", "RECO_RATING_MAX": "1"}, "RECO_RATING_MIN"),
    ],
)
def test_malformed_values_name_setting_and_value_in_every_role(cls: type[Settings], env: dict, needle: str) -> None:
    # A trainer or serving variable is checked even by a role that does not read it.
    with pytest.raises(ConfigError) as err:
        cls.load(env=env)
    assert needle in str(err.value)


@pytest.mark.parametrize("cls", ROLES)
def test_unknown_reco_variable_is_reported(cls: type[Settings]) -> None:
    with pytest.raises(ConfigError, match="unknown setting.*RECO_FACTROS"):
        cls.load(env={"RECO_FACTROS": "8", "RECO_FACTORS": "8"})


@pytest.mark.parametrize("cls", ROLES)
def test_a_trainer_only_variable_is_accepted_by_every_role(cls: type[Settings]) -> None:
    s = cls.load(env={"RECO_FACTORS": "8", "RECO_CHECKPOINT_DIR": "/ck", "RECO_API_KEY": "k", "RECO_PARTITIONS": "2"})
    assert s.partitions == 2
    if isinstance(s, TrainerSettings):  # kept where the role reads it, checked and left out elsewhere
        assert (s.factors, s.checkpoint_dir) == (8, "/ck")
    else:
        assert not hasattr(s, "factors")


def test_every_role_command_starts_with_a_trainer_only_variable() -> None:
    # The real start-up check: `reco streamproc` (no trainer code) with the trainer's variables set stops
    # at the unreachable broker, not at the settings; an unknown variable stops it at the settings.
    env = {"RECO_KAFKA_BOOTSTRAP": "127.0.0.1:1", "RECO_FACTORS": "8", "RECO_ROW_TTL_S": "60", "PATH": ""}
    code = ("import sys; from streamproc.cli import build_parser; from streamproc.settings import program_settings\n"
            "build_parser(); s = program_settings().load()\n"
            "print(type(s).__name__, s.factors, s.row_ttl_s)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ServingSettings", "8", "60.0"]
    bad = subprocess.run([sys.executable, "-m", "streamproc.cli", "streamproc"], env={**env, "RECO_FACTORS": "eight"},
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "RECO_FACTORS='eight': expected an integer" in bad.stderr


def test_program_settings_extend_every_section() -> None:
    assert sections()[:3] == [Settings, TrainerSettings, ServingSettings]
    assert program_settings() is ServingSettings
    assert issubclass(ServingSettings, TrainerSettings) and issubclass(TrainerSettings, Settings)


def test_toml_file_then_env(tmp_path) -> None:
    f = tmp_path / "reco.toml"
    f.write_text('[reco]\npartitions = 6\ntopic_prefix = "x."\nfactors = 12\n')
    s = Settings.load(env={"RECO_TOPIC_PREFIX": "y."}, file=f)
    assert (s.partitions, s.topic_prefix) == (6, "y.")
    assert TrainerSettings.load(env={}, file=f).factors == 12
    f.write_text("[reco]\nparttions = 6\n")
    with pytest.raises(ConfigError, match="parttions"):
        Settings.load(env={}, file=f)
    f.write_text("[reco]\nfactors = 0\n")
    with pytest.raises(ConfigError, match="RECO_FACTORS=0"):
        Settings.load(env={}, file=f)


def test_copies_keep_the_section_and_its_checks() -> None:
    s = ServingSettings(api_key="k", factors=8)
    t = dataclasses.replace(s, topic_prefix="x.")
    assert type(t) is ServingSettings and (t.api_key, t.factors, t.topic_prefix) == ("k", 8, "x.")
    with pytest.raises(ConfigError, match="RECO_MAX_K=0"):
        dataclasses.replace(s, max_k=0)


def test_secrets_are_redacted_and_security_passes_through() -> None:
    s = ServingSettings(api_key="k", kafka_security_protocol="SASL_SSL", kafka_sasl_username="u", kafka_sasl_password="pw")
    assert s.redacted()["api_key"] == "***" and s.redacted()["kafka_sasl_password"] == "***"
    cfg = s.kafka_client_config()
    assert cfg["security_protocol"] == "SASL_SSL" and cfg["sasl_plain_password"] == "pw"


def test_to_env_round_trips_through_the_section() -> None:
    s = ServingSettings(api_key="k", factors=8, push_enabled=False, partitions=2)
    assert s.to_env() == {"RECO_API_KEY": "k", "RECO_FACTORS": "8", "RECO_PUSH_ENABLED": "false", "RECO_PARTITIONS": "2"}
    assert ServingSettings.load(env=s.to_env()) == s


def test_settings_table_names_each_settings_section() -> None:
    rows = {line.split(" | ")[0].strip("| `"): line.split(" | ")[1] for line in markdown_table().splitlines()[2:]}
    assert (rows["RECO_KAFKA_BOOTSTRAP"], rows["RECO_FACTORS"], rows["RECO_API_KEY"]) == ("core", "trainer", "serving")
    assert set(rows) == {env for env, *_ in ServingSettings.describe()}


def test_a_library_users_core_load_knows_every_installed_section() -> None:
    # An app that only publishes events imports the core alone; the installed sections (entry points
    # `reco.settings`) still make RECO_FACTORS known and checked, so one environment serves it too.
    env = {"RECO_FACTORS": "8", "PATH": ""}
    code = ("import sys; from streamproc.settings import Settings\n"
            "assert 'trainer.settings' not in sys.modules\n"
            "s = Settings.load(); print(type(s).__name__, hasattr(s, 'factors'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["Settings", "False"]
    bad = subprocess.run([sys.executable, "-c", code], env={**env, "RECO_FACTORS": "eight"}, capture_output=True, text=True,
                         timeout=120, cwd="/")
    assert bad.returncode != 0 and "RECO_FACTORS='eight': expected an integer" in bad.stderr
