"""Codec libraries are installed for both Kafka clients; undecodable-batch markers cannot be forged.

The guard itself runs against the real broker in ``tests/integration/test_undecodable_batches.py``.
"""

from __future__ import annotations

from types import SimpleNamespace

import aiokafka.codec
import kafka.codec
import pytest

from streamproc.undecodable import MARKER_HEADER, undecodable

CODECS = ("gzip", "snappy", "lz4", "zstd")


@pytest.mark.parametrize("codec", CODECS)
def test_both_clients_have_every_codec(codec: str) -> None:
    # Without the library the client raises UnsupportedCodecError on every batch of that codec.
    assert getattr(kafka.codec, f"has_{codec}")(), f"kafka-python cannot decode {codec}: its library is not installed"
    assert getattr(aiokafka.codec, f"has_{codec}")(), f"aiokafka cannot decode {codec}: cramjam is not installed"


@pytest.mark.parametrize("codec", CODECS)
def test_codecs_round_trip_in_both_clients(codec: str) -> None:
    payload = b'{"type":"rating","user_id":"u1"}' * 200
    for mod in (kafka.codec, aiokafka.codec):
        encoded = getattr(mod, f"{codec}_encode")(payload)
        assert len(encoded) < len(payload)
        # Each client decodes what the other encodes (a batch may come from any producer).
        for other in (kafka.codec, aiokafka.codec):
            assert bytes(getattr(other, f"{codec}_decode")(encoded)) == payload


def _record(value: bytes | None, headers: list[tuple[str, bytes]]) -> SimpleNamespace:
    return SimpleNamespace(topic="t", partition=0, offset=7, value=value, headers=headers)


def test_a_producer_cannot_forge_a_marker() -> None:
    forged = [(MARKER_HEADER, b"guess"), ("reason", b"corrupt_batch"), ("codec", b"lz4"),
              ("first_offset", b"0"), ("message", b"x")]
    assert undecodable(_record(None, forged)) is None
    assert undecodable(_record(b"{}", forged)) is None
    assert undecodable(_record(None, [])) is None  # a tombstone is not a marker either


def test_compression_setting_is_checked_and_mapped() -> None:
    from streamproc.errors import ConfigError
    from streamproc.settings import Settings

    assert Settings().compression == "zstd"  # measured: halves snapshots for ~3 ms/MB (README)
    assert Settings.load(env={"RECO_COMPRESSION": "lz4"}).compression_type == "lz4"
    assert Settings.load(env={"RECO_COMPRESSION": "none"}).compression_type is None
    with pytest.raises(ConfigError, match="RECO_COMPRESSION='brotli'"):
        Settings.load(env={"RECO_COMPRESSION": "brotli"})
