"""Record batches a consumer cannot decode become one marker record instead of an endless error.

Kafka hands a consumer whole record batches. When the client library cannot decompress or parse
one (a codec it has no library for, a corrupt payload, a CRC mismatch), aiokafka and kafka-python
raise from ``getmany``/``poll`` *without moving the position*: the next call fetches the same batch
and raises again, and a worker that dies on it restarts into the same batch (issue 17's crash
loop). Every later event of that partition is stuck behind it.

:func:`install` (called by :func:`streamproc.kafka.client_config`, so by every role) wraps the
record batches both libraries hand to their record iterators: where decoding a batch fails (at
its first record when it cannot be decompressed, later for a corrupt record), the iterator yields
a single *marker* record for the rest of the batch, whose offset is the batch's last offset — so
the library moves the position past the batch exactly as after a normal batch, and the consumer
meets the marker in order, through the ordinary API, with nothing before or after it lost. :func:`undecodable` tells a marker from a real record (a per-process
random token in its headers, so a producer cannot forge one) and returns where the batch was and
why it failed. Every role decides what to do with it: stream workers dead-letter it
(``reason=undecodable_batch``), the others count and log it.

Only the batch objects are wrapped (``PartitionRecords`` gets a proxy of the fetched
``MemoryRecords``); the libraries' own logic for control batches, transactions and positions runs
unchanged. Tested against aiokafka 0.14 and kafka-python 3.0 (pinned in ``pyproject.toml``).

Examples
--------
>>> install()
>>> undecodable(type("R", (), {"value": b"{}", "headers": ()})()) is None
True
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["install", "undecodable", "UndecodableBatch", "MARKER_HEADER", "REASONS"]

log = logging.getLogger(__name__)

MARKER_HEADER = "reco.undecodable"
_TOKEN = secrets.token_hex(16).encode()
#: Bounded reasons (metric labels): the codec's library is missing, the CRC does not match, or
#: decompressing/parsing the batch failed.
REASONS = ("unsupported_codec", "crc_mismatch", "corrupt_batch")
_CODEC_NAMES = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}

_installed = False
_install_lock = threading.Lock()


@dataclass(frozen=True)
class UndecodableBatch:
    """Where an undecodable batch was and why it could not be read."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    reason: str
    codec: str
    message: str

    @property
    def records(self) -> int:
        """Offsets the batch spans (records lost to compaction included)."""
        return self.last_offset - self.first_offset + 1


def undecodable(record: Any) -> UndecodableBatch | None:
    """The :class:`UndecodableBatch` a consumer record stands for, or ``None`` for a real record.

    Cheap for real records: only records without a value are inspected.
    """
    if record.value is not None:
        return None
    headers = dict(record.headers or ())
    if headers.get(MARKER_HEADER) != _TOKEN:
        return None
    return UndecodableBatch(
        topic=record.topic,
        partition=record.partition,
        first_offset=int(headers["first_offset"]),
        last_offset=record.offset,
        reason=headers["reason"].decode(),
        codec=headers["codec"].decode(),
        message=headers["message"].decode("utf-8", "replace"),
    )


def _describe(exc: BaseException) -> str:
    name, text = type(exc).__name__, str(exc)
    return text if text.startswith(name) else f"{name}: {text}" if text else name


def _reason(exc: BaseException) -> str:
    name = type(exc).__name__
    if name == "UnsupportedCodecError" or isinstance(exc, NotImplementedError):
        return "unsupported_codec"
    return "corrupt_batch"


class _Marker:
    """Stands in for the records of an undecodable batch (the attributes both libraries read)."""

    __slots__ = ("offset", "timestamp", "timestamp_type", "headers")
    key = None
    value = None
    checksum = None
    size_in_bytes = 0

    def __init__(self, offset: int, timestamp: int, headers: list[tuple[str, bytes]]) -> None:
        self.offset = offset
        self.timestamp = timestamp
        self.timestamp_type = 0
        self.headers = headers

    def validate_crc(self) -> bool:
        return True


class _GuardedBatch:
    """A record batch whose records come out as usual; where decoding fails, one :class:`_Marker`
    stands for the rest of the batch."""

    __slots__ = ("_batch", "_tp", "_fetch_offset", "_it", "_failure")

    def __init__(self, batch: Any, tp: Any, fetch_offset: int) -> None:
        self._batch = batch
        self._tp = tp
        self._fetch_offset = fetch_offset
        self._it: Iterator[Any] | None = None
        self._failure: tuple[str, str] | None = None

    def __getattr__(self, name: str) -> Any:  # base_offset, next_offset, magic, is_control_batch, ...
        return getattr(self._batch, name)

    def validate_crc(self) -> bool:
        try:
            ok = self._batch.validate_crc()
        except Exception as exc:  # noqa: BLE001 - unreadable header: undecodable, not fatal
            ok, detail = False, _describe(exc)
        else:
            detail = "record batch CRC does not match its contents"
        if not ok and self._failure is None:
            self._failure = ("crc_mismatch", detail)
        return True  # the marker is yielded by __iter__

    def _records_or_marker(self) -> Iterator[Any]:
        """The batch's records; if the library fails on them (decompressing happens at the first
        one), one marker for the rest of the batch instead. Lazy: no measurable cost per record."""
        if self._failure is None:
            last = None
            try:
                for record in self._batch:
                    last = record.offset
                    yield record
                return
            except Exception as exc:  # noqa: BLE001 - whatever the library rejects
                self._failure = (_reason(exc), _describe(exc))
            yield self._marker(*self._failure, after=last)
        else:
            yield self._marker(*self._failure)

    def _marker(self, reason: str, message: str, after: int | None = None) -> _Marker:
        b = self._batch
        try:
            last = int(b.next_offset) - 1
        except Exception:  # noqa: BLE001 - legacy formats: the wrapper's offset is the last one
            last = int(getattr(b, "offset", self._fetch_offset))
        try:
            first = max(int(b.base_offset), self._fetch_offset)
        except Exception:  # noqa: BLE001
            first = self._fetch_offset
        if after is not None:  # records up to ``after`` were delivered
            first = max(first, after + 1)
        last = max(last, first)
        try:
            codec = _CODEC_NAMES.get(int(b.compression_type), str(b.compression_type))
        except Exception:  # noqa: BLE001
            codec = "unknown"
        ts = getattr(b, "max_timestamp", None)
        topic, partition = self._tp
        log.error("undecodable record batch %s[%d] offsets %d-%d (codec %s): %s: %s",
                  topic, partition, first, last, codec, reason, message)
        headers = [
            (MARKER_HEADER, _TOKEN),
            ("reason", reason.encode()),
            ("codec", codec.encode()),
            ("first_offset", str(first).encode()),
            ("message", message.encode("utf-8", "replace")[:1000]),
        ]
        return _Marker(last, int(ts) if isinstance(ts, int) and ts > 0 else -1, headers)

    def __iter__(self) -> Any:
        if self._it is None:
            self._it = self._records_or_marker()
        return self._it

    def __next__(self) -> Any:  # aiokafka reads control batches with next(batch)
        return next(iter(self))


class _GuardedRecords:
    """Proxy of a fetched ``MemoryRecords``: batches come out as :class:`_GuardedBatch`."""

    __slots__ = ("_records", "_tp", "_fetch_offset")

    def __init__(self, records: Any, tp: Any, fetch_offset: int) -> None:
        self._records = records
        self._tp = tp
        self._fetch_offset = fetch_offset

    def __getattr__(self, name: str) -> Any:
        return getattr(self._records, name)

    def next_batch(self, *args: Any, **kwargs: Any) -> Any:
        batch = self._records.next_batch(*args, **kwargs)
        return None if batch is None else _GuardedBatch(batch, self._tp, self._fetch_offset)


def _install_aiokafka() -> None:
    from aiokafka.consumer import fetcher

    base = fetcher.PartitionRecords
    if getattr(base, "_reco_guarded", False):
        return

    class GuardedPartitionRecords(base):  # type: ignore[misc, valid-type]
        _reco_guarded = True

        def __init__(self, tp: Any, records: Any, aborted_transactions: Any, fetch_offset: int, *args: Any, **kw: Any) -> None:
            super().__init__(tp, _GuardedRecords(records, (tp.topic, tp.partition), fetch_offset), aborted_transactions,
                             fetch_offset, *args, **kw)

    fetcher.PartitionRecords = GuardedPartitionRecords


def _install_kafka_python() -> None:
    from kafka.consumer.fetcher import Fetcher

    base = Fetcher.PartitionRecords
    if getattr(base, "_reco_guarded", False):
        return

    class GuardedPartitionRecords(base):  # type: ignore[misc, valid-type]
        _reco_guarded = True

        def __init__(self, fetch_offset: int, tp: Any, records: Any, *args: Any, **kw: Any) -> None:
            super().__init__(fetch_offset, tp, _GuardedRecords(records, (tp.topic, tp.partition), fetch_offset), *args, **kw)

    Fetcher.PartitionRecords = GuardedPartitionRecords


def install() -> None:
    """Guard aiokafka's and kafka-python's consumers in this process (idempotent, thread-safe)."""
    global _installed
    if _installed:
        return
    with _install_lock:
        if not _installed:
            _install_aiokafka()
            _install_kafka_python()
            _installed = True
