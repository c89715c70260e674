"""The model-update contract: what the trainer writes to the model-updates topic.

Each message is a safetensors file (data only, never pickle) whose metadata key ``"reco"`` holds a
JSON header:

``version``          int, strictly increasing per model
``kind``             ``"delta"`` (rows touched since ``base_version``) or ``"snapshot"`` (all rows)
``base_version``     for deltas: the version this delta applies on top of (gap detection)
``chunk``/``chunks`` snapshots larger than the message limit are split by rows; a snapshot is
                     complete when all ``chunks`` chunks of one ``version`` arrived
``global_mean``      float
``user_ids``/``item_ids``  ids of the rows in the tensors below, in order
``newest_event_time`` newest app event time covered (Unix s)
``newest_published`` newest Kafka publish time (Unix s) of the events covered: serving measures
                     feedback latency as "visible now − newest_published" per update
``published``        list of [user_id, item_id, published] for the feedback covered (deltas)
``user_candidates``  per user row (aligned with ``user_ids``): the item ids of its sparse
                     neighbourhood scores ``user_candidate_scores`` (see :mod:`trainer.cooc`)
``ranking``          the blend weights of :func:`trainer.scoring.score_items` (``knn``,
                     ``popularity``, ``mf``, ``rating_span``): what serving ranks by
``offsets``          {"topic:partition": next offset} of the examples consumed
``created``          Unix s when the trainer published it

Tensors (float32): ``user_factors`` [U, k], ``user_bias`` [U], ``user_candidate_scores`` [U, N]
(0-padded), ``user_mf_gain`` [U] (weight of the factor part for that user), ``item_factors`` [I, k], ``item_bias`` [I], ``item_popularity`` [I] (time-decayed
interaction count, as of the update), ``item_log_popularity`` [I] (event-clock decayed count,
log, comparable across updates), ``item_feedback`` [I, 10] (per-item comment sentiment, ratings and
sentiment trend for feedback analysis; columns ``trainer.feedback.FEEDBACK_COLUMNS``, finite, 0 for
"nothing yet"). The factors are the *effective* vectors (text projections folded
in). Serving ranks by :func:`trainer.scoring.score_items` with the header's ``ranking``.

Examples
--------
>>> import numpy as np
>>> u = ModelUpdate(header={"version": 3, "kind": "delta", "base_version": 2, "user_ids": ["a", "b"]},
...                 tensors={"user_bias": np.zeros(2, np.float32)})
>>> ModelUpdate.decode(u.encode()).header["version"]
3
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamproc.errors import InvalidUpdate

__all__ = ["ModelUpdate", "TENSOR_NAMES"]

TENSOR_NAMES = ("user_factors", "user_bias", "user_candidate_scores", "user_mf_gain", "item_factors", "item_bias", "item_popularity",
                "item_log_popularity", "item_feedback")
_REQUIRED = ("version", "kind")


@dataclass
class ModelUpdate:
    header: dict[str, Any]
    tensors: dict[str, np.ndarray] = field(default_factory=dict)

    def encode(self) -> bytes:
        from safetensors.numpy import save

        tensors = {k: np.ascontiguousarray(v) for k, v in self.tensors.items()}
        return save(tensors, metadata={"reco": json.dumps(self.header, separators=(",", ":"))})

    @staticmethod
    def _header(data: bytes) -> Any:
        if len(data) < 8:
            raise ValueError("truncated")
        hlen = int.from_bytes(data[:8], "little")
        if hlen <= 0 or 8 + hlen > len(data):
            raise ValueError("truncated header")
        meta = json.loads(data[8 : 8 + hlen]).get("__metadata__") or {}
        return json.loads(meta["reco"])

    @classmethod
    def peek_header(cls, data: bytes) -> dict[str, Any] | None:
        """The JSON header alone (no tensors decoded, nothing checked); None if unreadable."""
        try:
            header = cls._header(data)
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        return header if isinstance(header, dict) else None

    @classmethod
    def decode(cls, data: bytes) -> ModelUpdate:
        """Parse and sanity-check; any corruption raises :class:`InvalidUpdate`."""
        from safetensors import SafetensorError
        from safetensors.numpy import load

        try:
            header = cls._header(data)
            tensors = load(bytes(data))
        except (SafetensorError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidUpdate(f"corrupt model update: {exc}") from None
        if not isinstance(header, dict) or any(k not in header for k in _REQUIRED):
            raise InvalidUpdate("corrupt model update: header lacks version/kind")
        if header["kind"] not in ("delta", "snapshot") or not isinstance(header["version"], int):
            raise InvalidUpdate(f"corrupt model update: bad kind/version {header.get('kind')!r}/{header.get('version')!r}")
        nu, ni = len(header.get("user_ids", [])), len(header.get("item_ids", []))
        for name, arr in tensors.items():
            rows = nu if name.startswith("user") else ni
            if arr.shape[:1] != (rows,) or not np.all(np.isfinite(arr)):
                raise InvalidUpdate(f"corrupt model update: tensor {name} has shape {arr.shape} for {rows} rows or non-finite values")
        return cls(header, tensors)
