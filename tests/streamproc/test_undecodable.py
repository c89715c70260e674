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


# ---------------------------------------------------------------- the guard on in-memory batches
def _batch(base: int, n: int, *, codec: int = 0, garbage: bool = False, corrupt_last: bool = False) -> bytes:
    """One v2 record batch at offsets ``base``… (kafka-python's builder; CRC kept valid)."""
    import struct

    import kafka.record.default_records as dr
    from kafka.record.util import calc_crc32c

    b = dr.DefaultRecordBatchBuilder(magic=2, compression_type=codec, is_transactional=False, producer_id=-1,
                                     producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    for i in range(n):
        b.append(i, timestamp=1_700_000_000_000, key=b"u", value=b'{"n": %d}' % (base + i) + b" " * 200, headers=[])
    name = {1: "gzip_encode", 2: "snappy_encode", 3: "lz4_encode", 4: "zstd_encode"}.get(codec)
    real = getattr(dr, name) if name else None
    if garbage and name:
        setattr(dr, name, lambda data, *a, **kw: b"\x00garbage")
    try:
        buf = bytearray(b.build())
    finally:
        if name:
            setattr(dr, name, real)
    struct.pack_into(">q", buf, 0, base)  # base offset (not covered by the CRC)
    if corrupt_last:
        buf[-5:] = b"\xff" * 5  # the last record's bytes: an impossible varint
        struct.pack_into(">I", buf, dr.DefaultRecordBatch.CRC_OFFSET, calc_crc32c(bytes(buf[dr.DefaultRecordBatch.ATTRIBUTES_OFFSET:])))
    return bytes(buf)


FETCH = _batch(0, 5) + _batch(5, 10, codec=3, garbage=True) + _batch(15, 4, codec=4) + _batch(19, 6, corrupt_last=True) + _batch(25, 3, codec=1)


def _summary(records: list) -> list:
    out = []
    for r in records:
        bad = undecodable(r)
        out.append((bad.first_offset, r.offset, bad.reason) if bad else r.offset)
    return out


EXPECTED = [0, 1, 2, 3, 4, (5, 14, "corrupt_batch"), 15, 16, 17, 18, 19, 20, 21, 22, 23, (24, 24, "corrupt_batch"), 25, 26, 27]


def test_aiokafka_iterator_yields_markers_in_place_of_what_it_cannot_decode() -> None:
    from aiokafka.consumer import fetcher
    from aiokafka.record.memory_records import MemoryRecords
    from aiokafka.structs import TopicPartition

    from streamproc.undecodable import install

    install()
    records = list(fetcher.PartitionRecords(TopicPartition("t", 0), MemoryRecords(FETCH), [], 0, None, None, True, 0))
    assert _summary(records) == EXPECTED


def test_kafka_python_iterator_yields_markers_in_place_of_what_it_cannot_decode() -> None:
    from kafka.consumer.fetcher import Fetcher
    from kafka.record import MemoryRecords
    from kafka.structs import TopicPartition

    from streamproc.undecodable import install

    install()
    part = Fetcher.PartitionRecords(0, TopicPartition("t", 0), MemoryRecords(FETCH))
    records = []
    while part:  # as the fetcher drains it, a few records per poll
        records += part.take(3)
    assert _summary(records) == EXPECTED
    assert part.next_fetch_offset == 28  # the position moves past every batch


def test_crc_mismatch_is_a_marker_for_the_whole_batch() -> None:
    from aiokafka.consumer import fetcher
    from aiokafka.record.memory_records import MemoryRecords
    from aiokafka.structs import TopicPartition

    from streamproc.undecodable import install

    install()
    bad = bytearray(_batch(3, 4))
    bad[-1] ^= 0xFF  # payload changed, CRC not updated
    records = list(fetcher.PartitionRecords(TopicPartition("t", 0), MemoryRecords(_batch(0, 3) + bytes(bad)), [], 0, None, None, True, 0))
    assert _summary(records) == [0, 1, 2, (3, 6, "crc_mismatch")]
