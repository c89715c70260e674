from __future__ import annotations

import pytest

from streamproc.errors import ConfigError
from streamproc.settings import Settings


def test_defaults_load() -> None:
    s = Settings.load(env={})
    assert s.kafka_bootstrap == "" and s.partitions == 4 and s.topic_prefix == "reco."


def test_env_overrides_and_types() -> None:
    s = Settings.load(env={"RECO_PARTITIONS": "8", "RECO_PUSH_ENABLED": "false", "RECO_LEARNING_RATE": "0.1"})
    assert (s.partitions, s.push_enabled, s.learning_rate) == (8, False, 0.1)


@pytest.mark.parametrize(
    "env, needle",
    [
        ({"RECO_PARTITIONS": "eight"}, "RECO_PARTITIONS='eight'"),
        ({"RECO_PARTITIONS": "0"}, "RECO_PARTITIONS=0"),
        ({"RECO_LEARNING_RATE": "nan"}, "RECO_LEARNING_RATE='nan'"),
        ({"RECO_PUSH_ENABLED": "maybe"}, "RECO_PUSH_ENABLED='maybe'"),
        ({"RECO_REPLAY_POLICY": "lifo"}, "RECO_REPLAY_POLICY='lifo'"),
        ({"RECO_PARTITONS": "4"}, "RECO_PARTITONS"),
        ({"RECO_RATING_MIN": "5", "RECO_RATING_MAX": "1"}, "RECO_RATING_MIN"),
    ],
)
def test_malformed_values_name_setting_and_value(env: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.load(env=env)
    assert needle in str(err.value)


def test_toml_file_then_env(tmp_path) -> None:
    f = tmp_path / "reco.toml"
    f.write_text('[reco]\npartitions = 6\ntopic_prefix = "x."\n')
    s = Settings.load(env={"RECO_TOPIC_PREFIX": "y."}, file=f)
    assert (s.partitions, s.topic_prefix) == (6, "y.")
    f.write_text("[reco]\nparttions = 6\n")
    with pytest.raises(ConfigError, match="parttions"):
        Settings.load(env={}, file=f)


def test_secrets_are_redacted_and_security_passes_through() -> None:
    s = Settings(api_key="k", kafka_security_protocol="SASL_SSL", kafka_sasl_username="u", kafka_sasl_password="pw")
    assert s.redacted()["api_key"] == "***" and s.redacted()["kafka_sasl_password"] == "***"
    cfg = s.kafka_client_config()
    assert cfg["security_protocol"] == "SASL_SSL" and cfg["sasl_plain_password"] == "pw"
