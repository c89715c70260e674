"""The training-example contract: what stream workers write to the examples topic.

One Kafka message carries a batch of examples in a compact binary layout::

    b"RXB1" | uint32 LE header length | header (UTF-8 JSON) | records | embeddings

header      {"n": N, "dim": D, "n_emb": E, "event_ids": [...], "user_ids": [...], "item_ids": [...]}
records     N little-endian packed records (``RECORD_DTYPE``):
            kind u1 (0 rating, 1 click, 2 comment, 3 item content: a catalogue record's
            encoded title/description for ``item_ids[i]``, ``user_ids[i]`` empty, ``emb_row`` its
            content vector, ``target`` NaN, ``weight`` 1 if available else 0) · target f4 (rating value, NaN if none) ·
            weight f4 · emb_row i4 (row in embeddings, -1 if none) · event_time f8 (Unix s) ·
            published f8 (Unix s, Kafka timestamp of the event) · processed f8 (Unix s, when the
            stream worker emitted it)
embeddings  E × D float32, L2-normalised comment embeddings

Examples
--------
>>> import numpy as np
>>> b = ExampleBatch.build(
...     event_ids=["e1", "e2"], user_ids=["u", "u"], item_ids=["a", "b"],
...     kinds=[KIND_RATING, KIND_COMMENT], targets=[4.0, float("nan")],
...     event_times=[1.0, 2.0], published=[3.0, 4.0], processed=[5.0, 6.0],
...     embeddings=np.ones((1, 4), np.float32), emb_rows=[-1, 0])
>>> c = ExampleBatch.decode(b.encode())
>>> c.item_ids, int(c.records["emb_row"][1]), c.embeddings.shape
(['a', 'b'], 0, (1, 4))
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from streamproc.errors import RecoError

__all__ = ["ExampleBatch", "ExampleColumns", "COLUMNS", "RECORD_DTYPE", "KIND_RATING", "KIND_CLICK", "KIND_COMMENT", "KIND_ITEM", "KIND_NAMES"]

MAGIC = b"RXB1"
KIND_RATING, KIND_CLICK, KIND_COMMENT, KIND_ITEM = 0, 1, 2, 3
KIND_NAMES = ("rating", "click", "comment", "item")
RECORD_DTYPE = np.dtype(
    [
        ("kind", "<u1"),
        ("target", "<f4"),
        ("weight", "<f4"),
        ("emb_row", "<i4"),
        ("event_time", "<f8"),
        ("published", "<f8"),
        ("processed", "<f8"),
    ]
)


#: The per-example columns a producer gathers for :meth:`ExampleBatch.build`, in one order.
COLUMNS = ("event_ids", "user_ids", "item_ids", "kinds", "targets", "event_times", "published")


@dataclass(kw_only=True)
class ExampleColumns:
    """Examples being gathered for :meth:`ExampleBatch.build`, one list per column (:data:`COLUMNS`).

    Producers (the stream worker) extend it in place; the column list is written here only.

    >>> c = ExampleColumns()
    >>> for col, value in zip(c.lists(), ("e1", "u", "a", KIND_RATING, 4.0, 1.0, 2.0), strict=True):
    ...     col.append(value)
    >>> d = ExampleColumns()
    >>> d.extend(c, 0, 1)
    >>> d.extend_rows(c, [0])
    >>> len(d), d.item_ids, ExampleBatch.build(**d.columns(), processed=[3.0, 3.0]).item_ids
    (2, ['a', 'a'], ['a', 'a'])
    """

    event_ids: list[str] = field(default_factory=list)
    user_ids: list[str] = field(default_factory=list)
    item_ids: list[str] = field(default_factory=list)
    kinds: list[int] = field(default_factory=list)
    targets: list[float] = field(default_factory=list)
    event_times: list[float] = field(default_factory=list)
    published: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.kinds)

    def columns(self) -> dict[str, list[Any]]:
        """The column lists themselves by name (keyword arguments of :meth:`ExampleBatch.build`)."""
        return {name: getattr(self, name) for name in COLUMNS}

    def lists(self) -> tuple[list[Any], ...]:
        """The column lists themselves, in :data:`COLUMNS` order (to append to in a loop)."""
        return tuple(getattr(self, name) for name in COLUMNS)

    def extend_rows(self, other: ExampleColumns, positions: Sequence[int]) -> None:
        """Append the rows of ``other`` at ``positions``."""
        for mine, theirs in zip(self.lists(), other.lists(), strict=True):
            mine += [theirs[i] for i in positions]

    def extend(self, other: ExampleColumns, start: int, end: int) -> None:
        """Append rows ``start:end`` of ``other``."""
        for mine, theirs in zip(self.lists(), other.lists(), strict=True):
            mine += theirs[start:end]


class InvalidExampleBatch(RecoError, ValueError):
    """The bytes are not an example batch."""


@dataclass
class ExampleBatch:
    event_ids: list[str]
    user_ids: list[str]
    item_ids: list[str]
    records: np.ndarray  # RECORD_DTYPE, shape (n,)
    embeddings: np.ndarray  # float32, shape (n_emb, dim)

    def __len__(self) -> int:
        return len(self.records)

    @classmethod
    def build(
        cls,
        *,
        event_ids: Sequence[str],
        user_ids: Sequence[str],
        item_ids: Sequence[str],
        kinds: ArrayLike,
        targets: ArrayLike,
        event_times: ArrayLike,
        published: ArrayLike,
        processed: ArrayLike,
        weights: ArrayLike | None = None,
        emb_rows: ArrayLike | None = None,
        embeddings: np.ndarray | None = None,
    ) -> ExampleBatch:
        n = len(event_ids)
        rec = np.empty(n, RECORD_DTYPE)
        rec["kind"] = kinds
        rec["target"] = targets
        rec["weight"] = 1.0 if weights is None else weights
        rec["emb_row"] = -1 if emb_rows is None else emb_rows
        rec["event_time"] = event_times
        rec["published"] = published
        rec["processed"] = processed
        emb = np.zeros((0, 0), np.float32) if embeddings is None else np.ascontiguousarray(embeddings, np.float32)
        return cls(list(event_ids), list(user_ids), list(item_ids), rec, emb)

    def encode(self) -> bytes:
        n_emb, dim = (self.embeddings.shape if self.embeddings.size else (0, 0))
        header = json.dumps(
            {"n": len(self.records), "dim": int(dim), "n_emb": int(n_emb),
             "event_ids": self.event_ids, "user_ids": self.user_ids, "item_ids": self.item_ids},
            separators=(",", ":"),
        ).encode()
        return b"".join(
            [MAGIC, struct.pack("<I", len(header)), header, self.records.astype(RECORD_DTYPE, copy=False).tobytes(),
             self.embeddings.astype("<f4", copy=False).tobytes() if n_emb else b""]
        )

    @classmethod
    def decode(cls, data: bytes) -> ExampleBatch:
        try:
            if data[:4] != MAGIC:
                raise ValueError("bad magic")
            (hlen,) = struct.unpack_from("<I", data, 4)
            header = json.loads(data[8 : 8 + hlen])
            n, dim, n_emb = int(header["n"]), int(header["dim"]), int(header["n_emb"])
            off = 8 + hlen
            rec = np.frombuffer(data, RECORD_DTYPE, count=n, offset=off)
            off += n * RECORD_DTYPE.itemsize
            emb = np.frombuffer(data, "<f4", count=n_emb * dim, offset=off).reshape(n_emb, dim) if n_emb else np.zeros((0, dim), np.float32)
            if off + n_emb * dim * 4 != len(data):
                raise ValueError("length mismatch")
            ids = header["event_ids"], header["user_ids"], header["item_ids"]
            if not all(isinstance(x, list) and len(x) == n for x in ids):
                raise ValueError("id columns do not match n")
            return cls(*ids, rec, emb)
        except (ValueError, KeyError, TypeError, struct.error) as exc:
            raise InvalidExampleBatch(f"not a training-example batch: {exc}") from None
