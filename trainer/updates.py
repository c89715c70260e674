"""The model-update contract: what the trainer writes to the model-updates and model-snapshots topics.

This module is its one owner: the header (:class:`UpdateHeader`, typed and validated), the tensor
names and shapes (:data:`TENSORS`), the encoding (:class:`ModelUpdate`), :func:`peek` at a header
without the tensors, and the chunking of an update into messages (:func:`chunk_update`,
:func:`split_rows`). Serving imports them; nothing re-parses the header by hand.

Each message is a safetensors file (data only, never pickle) whose metadata key ``"reco"`` holds a
JSON header:

``version``          int ≥ 0, strictly increasing per model along the deltas
``kind``             ``"delta"`` (rows touched since ``base_version``, on ``model-updates``) or
                     ``"snapshot"`` (all rows, on ``model-snapshots``)
``base_version``     for deltas: the version this delta applies on top of (gap detection)
``chunk``/``chunks`` snapshots larger than the message limit are split by rows; a snapshot is
                     complete when all ``chunks`` chunks of one ``version`` arrived
``deltas_from``      snapshots: the model-updates offset at which the deltas following this
                     snapshot start (the first has ``base_version`` = this snapshot's version)
``global_mean``      float
``user_ids``/``item_ids``  ids of the rows in the tensors below, in order
``candidate_item_ids`` the item ids the ``user_candidates`` tensor indexes (only those this
                     message references, each once)
``snapshot_items``   snapshots instead of ``candidate_item_ids``: how many items the whole
                     snapshot holds; ``user_candidates`` then index the snapshot's ``item_ids``,
                     its chunks' lists joined in chunk order (no id list per chunk: at 1M users
                     those lists were most of a snapshot's encoding time). Readers older than
                     this field reject such snapshots: upgrade serving before the trainer
``newest_event_time`` newest app event time covered (Unix s)
``newest_published`` newest Kafka publish time (Unix s) of the events covered: serving measures
                     feedback latency as "visible now − newest_published" per update
``published``        list of [user_id, item_id, published] for the feedback covered (deltas)
``expired_user_ids``/``expired_item_ids`` (deltas) rows the trainer dropped (row TTL, erasure)
``ranking``          the blend weights of :func:`trainer.scoring.score_items` (``knn``,
                     ``popularity``, ``mf``, ``rating_span``, ``horizon``): what serving ranks by
``offsets``          {"topic:partition": next offset} of the examples consumed
``created``          Unix s when the trainer published it

Unknown header keys are kept (:attr:`UpdateHeader.extra`) and ignored: a newer trainer may add
fields. Headers written before candidates became a tensor carry ``user_candidates`` as a JSON list
of item-id lists per user (:attr:`UpdateHeader.user_candidates`); serving still reads them.

Tensors (:data:`TENSORS`; float32 unless noted): ``user_factors`` [U, k], ``user_bias`` [U],
``user_candidates`` int32 [U, N] (indexes into ``candidate_item_ids``, -1 padded; the user's sparse
neighbourhood, :mod:`trainer.cooc`), ``user_candidate_scores`` [U, N] (0-padded), ``user_mf_gain``
[U] (weight of the factor part for that user), ``item_factors`` [I, k], ``item_bias`` [I],
``item_popularity`` [I] (time-decayed interaction count, as of the update),
``item_log_popularity`` [I] or [I, H] (event-clock decayed count, log, comparable across updates),
``item_feedback`` [I, 10] (per-item comment sentiment, ratings and sentiment trend; columns
``trainer.feedback.FEEDBACK_COLUMNS``, 0 for "nothing yet"). The factors are the *effective*
vectors (text projections folded in). Serving ranks by :func:`trainer.scoring.score_items` with
the header's ``ranking``.

Examples
--------
>>> import numpy as np
>>> u = ModelUpdate({"version": 3, "kind": "delta", "base_version": 2, "user_ids": ["a", "b"]},
...                 tensors={"user_bias": np.zeros(2, np.float32)})
>>> ModelUpdate.decode(u.encode()).header.version, peek(u.encode()).base_version
(3, 2)
>>> UpdateHeader.from_dict({"version": 3, "kind": "delta", "base_version": 3})
Traceback (most recent call last):
    ...
streamproc.errors.InvalidUpdate: model update header: base_version: must be below version 3, got 3
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import numpy as np

from streamproc.errors import InvalidUpdate
from trainer.scoring import RankWeights

__all__ = ["ModelUpdate", "UpdateHeader", "TENSORS", "TENSOR_NAMES", "USER_TENSORS", "ITEM_TENSORS", "peek", "split_rows",
           "chunk_update", "ids_bytes", "HEADER_SLACK"]

# name -> (entity, dtype, ndims allowed)
TENSORS: dict[str, tuple[str, type, tuple[int, ...]]] = {
    "user_factors": ("user", np.float32, (2,)),
    "user_bias": ("user", np.float32, (1,)),
    "user_candidates": ("user", np.int32, (2,)),
    "user_candidate_scores": ("user", np.float32, (2,)),
    "user_mf_gain": ("user", np.float32, (1,)),
    "item_factors": ("item", np.float32, (2,)),
    "item_bias": ("item", np.float32, (1,)),
    "item_popularity": ("item", np.float32, (1,)),
    "item_log_popularity": ("item", np.float32, (1, 2)),
    "item_feedback": ("item", np.float32, (2,)),
}
TENSOR_NAMES = tuple(TENSORS)
USER_TENSORS = tuple(n for n, (e, _, _) in TENSORS.items() if e == "user")
ITEM_TENSORS = tuple(n for n, (e, _, _) in TENSORS.items() if e == "item")
Kind = Literal["delta", "snapshot"]


def _fail(name: str, message: str) -> InvalidUpdate:
    return InvalidUpdate(f"model update header: {name}: {message}")


def _int(d: dict[str, Any], name: str, default: int | None, lo: int = 0) -> int | None:
    v = d.get(name, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise _fail(name, f"must be an integer >= {lo}, got {v!r}")
    return v


def _float(d: dict[str, Any], name: str, default: float | None) -> float | None:
    v = d.get(name, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _fail(name, f"must be a finite number, got {v!r}")
    return float(v)


def _ids(d: dict[str, Any], name: str) -> list[str]:
    v = d.get(name)
    if v is None:
        return []
    if not isinstance(v, list) or not all(type(x) is str for x in v):
        raise _fail(name, "must be a list of strings")
    return v


@dataclass(frozen=True)
class UpdateHeader:
    """The validated header of one model-update message (fields: see the module docstring).

    Build from the wire form with :meth:`from_dict` (raises :class:`InvalidUpdate` naming the
    field); :meth:`to_dict` is the wire form (optional fields left out when unset).
    """

    version: int
    kind: Kind
    base_version: int | None = None
    chunk: int = 0
    chunks: int = 1
    deltas_from: int | None = None
    global_mean: float | None = None
    user_ids: list[str] = field(default_factory=list)
    item_ids: list[str] = field(default_factory=list)
    candidate_item_ids: list[str] | None = None
    snapshot_items: int | None = None
    user_candidates: list[list[str]] | None = None  # the JSON form of older trainers (rolling upgrade)
    ranking: RankWeights | None = None
    expired_user_ids: list[str] = field(default_factory=list)
    expired_item_ids: list[str] = field(default_factory=list)
    newest_event_time: float = 0.0
    newest_published: float = 0.0
    published: list[tuple[str, str, float]] = field(default_factory=list)
    offsets: dict[str, int] = field(default_factory=dict)
    created: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_snapshot(self) -> bool:
        return self.kind == "snapshot"

    @classmethod
    def from_dict(cls, d: Any) -> UpdateHeader:
        if not isinstance(d, dict):
            raise InvalidUpdate(f"model update header: must be a JSON object, got {type(d).__name__}")
        version = _int(d, "version", None)
        if version is None:
            raise _fail("version", "missing")
        kind = d.get("kind")
        if kind not in ("delta", "snapshot"):
            raise _fail("kind", f"must be 'delta' or 'snapshot', got {kind!r}")
        base = _int(d, "base_version", None)
        if kind == "delta" and base is not None and base >= version:
            raise _fail("base_version", f"must be below version {version}, got {base}")
        chunk, chunks = _int(d, "chunk", 0), _int(d, "chunks", 1, lo=1)
        assert chunk is not None and chunks is not None
        if chunk >= chunks:
            raise _fail("chunk", f"must be below chunks={chunks}, got {chunk}")
        cands = d.get("candidate_item_ids")
        if cands is not None:
            cands = _ids(d, "candidate_item_ids")
        snapshot_items = _int(d, "snapshot_items", None)
        if snapshot_items is not None and kind != "snapshot":
            raise _fail("snapshot_items", "only snapshots index their whole item list")
        users = _ids(d, "user_ids")
        legacy = d.get("user_candidates")
        if legacy is not None:
            if not isinstance(legacy, list) or len(legacy) != len(users) or not all(
                    isinstance(r, list) and all(type(x) is str for x in r) for r in legacy):
                raise _fail("user_candidates", f"must be one list of item ids per user ({len(users)})")
        ranking = d.get("ranking")
        if ranking is not None:
            if not isinstance(ranking, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                                        for v in ranking.values()):
                raise _fail("ranking", f"must be an object of finite numbers, got {ranking!r}")
            ranking = RankWeights.from_dict(ranking)
        published = d.get("published") or []
        if not isinstance(published, list):
            raise _fail("published", "must be a list of [user_id, item_id, published]")
        pub: list[tuple[str, str, float]] = []
        for e in published:
            if (not isinstance(e, list) or len(e) != 3 or type(e[0]) is not str or type(e[1]) is not str
                    or isinstance(e[2], bool) or not isinstance(e[2], (int, float)) or not math.isfinite(e[2])):
                raise _fail("published", f"entries must be [user_id, item_id, published], got {e!r}")
            pub.append((e[0], e[1], float(e[2])))
        offsets = d.get("offsets") or {}
        if not isinstance(offsets, dict) or not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0 for k, v in offsets.items()):
            raise _fail("offsets", "must map 'topic:partition' to an offset >= 0")
        known = {f.name for f in fields(cls)}
        return cls(version=version, kind=kind, base_version=base, chunk=chunk, chunks=chunks,
                   deltas_from=_int(d, "deltas_from", None), global_mean=_float(d, "global_mean", None),
                   user_ids=users, item_ids=_ids(d, "item_ids"), candidate_item_ids=cands, snapshot_items=snapshot_items,
                   user_candidates=legacy, ranking=ranking, expired_user_ids=_ids(d, "expired_user_ids"), expired_item_ids=_ids(d, "expired_item_ids"),
                   newest_event_time=_float(d, "newest_event_time", 0.0) or 0.0,
                   newest_published=_float(d, "newest_published", 0.0) or 0.0, published=pub, offsets=dict(offsets),
                   created=_float(d, "created", 0.0) or 0.0, extra={k: v for k, v in d.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"version": self.version, "kind": self.kind}
        for name in ("base_version", "deltas_from", "global_mean", "candidate_item_ids", "snapshot_items", "user_candidates"):
            v = getattr(self, name)
            if v is not None:
                d[name] = v
        if self.kind == "snapshot" or self.chunks != 1:
            d["chunk"], d["chunks"] = self.chunk, self.chunks
        d["user_ids"], d["item_ids"] = self.user_ids, self.item_ids
        if self.ranking is not None:
            d["ranking"] = self.ranking.to_dict()
        for name in ("expired_user_ids", "expired_item_ids"):
            if getattr(self, name):
                d[name] = getattr(self, name)
        d.update(newest_event_time=self.newest_event_time, newest_published=self.newest_published,
                 published=[list(p) for p in self.published], offsets=self.offsets, created=self.created)
        for k, v in self.extra.items():
            d.setdefault(k, v)
        return d


def _raw_header(data: bytes) -> Any:
    if len(data) < 8:
        raise ValueError("truncated")
    hlen = int.from_bytes(data[:8], "little")
    if hlen <= 0 or 8 + hlen > len(data):
        raise ValueError("truncated header")
    meta = json.loads(data[8 : 8 + hlen]).get("__metadata__") or {}
    return json.loads(meta["reco"])


def peek(data: bytes) -> UpdateHeader:
    """The validated header of an encoded update without decoding its tensors.

    Raises :class:`InvalidUpdate` when the message or its header is unreadable.

    Examples
    --------
    >>> peek(ModelUpdate({"version": 7, "kind": "delta"}).encode()).version
    7
    """
    try:
        raw = _raw_header(data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidUpdate(f"corrupt model update: {exc}") from None
    return UpdateHeader.from_dict(raw)


class ModelUpdate:
    """One model-update message: a validated :class:`UpdateHeader` and named tensors.

    ``header`` may be given as an :class:`UpdateHeader` or its wire form (a dict, validated).
    """

    __slots__ = ("header", "tensors")

    def __init__(self, header: UpdateHeader | dict[str, Any], tensors: dict[str, np.ndarray] | None = None) -> None:
        self.header = header if isinstance(header, UpdateHeader) else UpdateHeader.from_dict(header)
        self.tensors = dict(tensors or {})

    def __repr__(self) -> str:
        h = self.header
        return f"ModelUpdate({h.kind} v{h.version} chunk {h.chunk}/{h.chunks}, {len(h.user_ids)} users, {len(h.item_ids)} items)"

    def encode(self) -> bytes:
        from safetensors.numpy import save

        tensors = {k: np.ascontiguousarray(v) for k, v in self.tensors.items()}
        return save(tensors, metadata={"reco": json.dumps(self.header.to_dict(), separators=(",", ":"))})

    @classmethod
    def decode(cls, data: bytes) -> ModelUpdate:
        """Parse and check header and tensors; any corruption raises :class:`InvalidUpdate`."""
        from safetensors import SafetensorError
        from safetensors.numpy import load

        try:
            raw = _raw_header(data)
            tensors = load(bytes(data))
        except (SafetensorError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidUpdate(f"corrupt model update: {exc}") from None
        header = UpdateHeader.from_dict(raw)
        nu, ni = len(header.user_ids), len(header.item_ids)
        for name, arr in tensors.items():
            rows = ni if name.startswith("item") else nu
            if arr.shape[:1] != (rows,):
                raise InvalidUpdate(f"corrupt model update: tensor {name} has shape {arr.shape} for {rows} rows")
            if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                raise InvalidUpdate(f"corrupt model update: tensor {name} has non-finite values")
        cands = tensors.get("user_candidates")
        if cands is not None:
            whole = header.snapshot_items is not None
            n = header.snapshot_items if header.snapshot_items is not None else len(header.candidate_item_ids or ())
            if (header.candidate_item_ids is None and not whole) or cands.dtype != np.int32 or cands.ndim != 2:
                raise InvalidUpdate("corrupt model update: tensor user_candidates must be int32 [users, N] with candidate_item_ids")
            if cands.size and (int(cands.min()) < -1 or int(cands.max()) >= n):
                raise InvalidUpdate(f"corrupt model update: user_candidates indexes outside "
                                    f"{'the snapshot items' if whole else 'candidate_item_ids'} ({n})")
            scores = tensors.get("user_candidate_scores")
            if scores is not None and scores.shape != cands.shape:
                raise InvalidUpdate(f"corrupt model update: user_candidate_scores {scores.shape} vs user_candidates {cands.shape}")
        return cls(header, tensors)


# ---------------------------------------------------------------------------------- chunking
def _json_bytes(x: Any) -> int:
    """Bytes ``x`` adds to a header: its JSON, escaped once more as the safetensors metadata string
    (every quote doubles), plus a separator."""
    return len(json.dumps(json.dumps(x, separators=(",", ":")))) - 1


def _id_bytes(x: str) -> int:
    """:func:`_json_bytes` of one id in a list: quick for the plain ASCII ids most streams use (JSON
    quotes, escaped again in the metadata string, and a comma)."""
    if x.isascii() and x.isprintable() and '"' not in x and "\\" not in x:
        return len(x) + 5
    return _json_bytes(x)


def ids_bytes(ids: Sequence[str], fixed: int) -> list[int]:
    """What each id's row adds to a message: ``fixed`` (its tensors) plus its id in the header
    (:func:`_id_bytes`); one check over all of them when they are all plain (a per-id call took
    ~1.2 s of a 1M-user snapshot's chunking)."""
    joined = "a".join(ids)
    if joined.isascii() and joined.isprintable() and '"' not in joined and "\\" not in joined:
        return [fixed + 5 + n for n in map(len, ids)]
    return [fixed + _id_bytes(x) for x in ids]


HEADER_SLACK = 2048  # bytes reserved for the fixed header fields and safetensors framing


def split_rows(user_cost: Sequence[int], item_cost: Sequence[int], extra_cost: Sequence[int], budget: int) -> list[tuple[slice, slice, slice]]:
    """Pack user rows, item rows and ``published`` entries, in order, into parts of at most
    ``budget`` estimated bytes (a single oversized unit still gets its own part).

    Returns one ``(users, items, extras)`` slice triple per part; always at least one part.

    Examples
    --------
    >>> split_rows([10, 10], [10], [], 25)
    [(slice(0, 2, None), slice(0, 0, None), slice(0, 0, None)), (slice(2, 2, None), slice(0, 1, None), slice(0, 0, None))]
    """
    parts: list[tuple[slice, slice, slice]] = []
    starts = [0, 0, 0]
    pos = [0, 0, 0]
    used = 0
    for table, costs in enumerate((user_cost, item_cost, extra_cost)):
        for c in costs:
            if used and used + c > budget:
                parts.append((slice(starts[0], pos[0]), slice(starts[1], pos[1]), slice(starts[2], pos[2])))
                starts = list(pos)
                used = 0
            pos[table] += 1
            used += c
    parts.append((slice(starts[0], pos[0]), slice(starts[1], pos[1]), slice(starts[2], pos[2])))
    return parts


def _row_bytes(t: np.ndarray) -> int:
    return int(t.itemsize * (int(np.prod(t.shape[1:])) if t.ndim > 1 else 1))


def _local_candidates(rows: np.ndarray, id_space: Sequence[str | None]) -> tuple[np.ndarray, list[str]]:
    """``rows`` (indexes into ``id_space``, -1 padded) re-indexed into the ids they use, each once."""
    valid = rows >= 0
    uniq, inv = np.unique(rows[valid], return_inverse=True)
    out = np.full(rows.shape, -1, np.int32)
    out[valid] = inv.astype(np.int32)
    return out, [str(id_space[r]) for r in uniq.tolist()]


def chunk_update(header: UpdateHeader, tensors: dict[str, np.ndarray], max_bytes: int, *,
                 candidate_space: Sequence[str | None] | None = None) -> list[ModelUpdate]:
    """Split one update into messages of at most ~``max_bytes`` each, rows in order.

    ``header`` holds every row (``user_ids``, ``item_ids``, ``published``); ``tensors`` every row.
    ``tensors["user_candidates"]``, when present, indexes ``candidate_space`` (e.g. the trainer's
    item rows); each message of a delta gets the ``candidate_item_ids`` its users reference, a
    snapshot's candidates index its whole ``item_ids`` (``snapshot_items``). Snapshots get
    ``chunk``/``chunks`` (all the same version); a delta too large for one message becomes several
    consecutive deltas (versions ``version``, ``version + 1``, …, each based on the one before).

    Examples
    --------
    >>> import numpy as np
    >>> h = UpdateHeader(version=2, kind="snapshot", user_ids=["u1", "u2"], item_ids=["a", "b"])
    >>> t = {"user_bias": np.zeros(2, np.float32), "item_bias": np.zeros(2, np.float32),
    ...      "user_candidates": np.array([[1, -1], [0, 1]], np.int32)}
    >>> [(m.header.chunk, m.header.chunks, m.header.snapshot_items) for m in chunk_update(h, t, 10_000, candidate_space=["a", "b"])]
    [(0, 1, 2)]
    """
    users, items, published = header.user_ids, header.item_ids, header.published
    cands = tensors.get("user_candidates")
    if cands is not None and candidate_space is None:
        raise ValueError("candidate_space: required with a user_candidates tensor")
    whole = None  # snapshots: the candidates as positions in the snapshot's item list (header snapshot_items)
    if cands is not None and header.is_snapshot:
        assert candidate_space is not None
        at = {x: k for k, x in enumerate(items)}
        pos = np.fromiter((at.get(x, -1) if x else -1 for x in candidate_space), np.int32, len(candidate_space))
        whole = np.append(pos, np.int32(-1))[cands]  # -1 pads index the appended -1; an item not in the snapshot: -1
        cands = None
    u_fixed = sum(_row_bytes(t) for n, t in tensors.items() if not n.startswith("item"))
    i_fixed = sum(_row_bytes(t) for n, t in tensors.items() if n.startswith("item"))
    # a referenced candidate id costs its JSON once per message; estimated as one id per user here,
    # parts that turn out larger are halved below
    cand_share = 0 if cands is None else 12
    u_cost = ids_bytes(users, u_fixed + cand_share)
    i_cost = ids_bytes(items, i_fixed)
    p_cost = [_json_bytes(list(p)) for p in published]
    fixed = HEADER_SLACK + _json_bytes(header.offsets) + _json_bytes(header.expired_user_ids) + _json_bytes(header.expired_item_ids)
    budget = max(max_bytes - fixed, 1024)
    # items first: a user's candidates may name an item this very update introduces
    parts = [(us, its, ps) for its, us, ps in split_rows(i_cost, u_cost, p_cost, budget)]

    def build(us: slice, its: slice, ps: slice, n: int, total: int) -> tuple[UpdateHeader, dict[str, np.ndarray]]:
        part = {name: t[us] if not name.startswith("item") else t[its] for name, t in tensors.items()}
        cand_ids = None
        if whole is not None:
            part["user_candidates"] = whole[us]
        elif cands is not None:
            assert candidate_space is not None
            part["user_candidates"], cand_ids = _local_candidates(cands[us], candidate_space)
        first = n == 0
        snap = header.is_snapshot
        version = header.version if snap else header.version + n  # a delta's parts: consecutive versions
        base = header.base_version if snap or header.base_version is None else header.base_version + n
        h = UpdateHeader(version=version, kind=header.kind, base_version=base, chunk=n if snap else 0,
                         chunks=total if header.is_snapshot else 1, deltas_from=header.deltas_from, global_mean=header.global_mean,
                         user_ids=users[us], item_ids=items[its], candidate_item_ids=cand_ids,
                         snapshot_items=len(items) if whole is not None else None, ranking=header.ranking,
                         expired_user_ids=header.expired_user_ids if first else [],
                         expired_item_ids=header.expired_item_ids if first else [],
                         newest_event_time=header.newest_event_time, newest_published=header.newest_published,
                         published=published[ps], offsets=header.offsets, created=header.created, extra=header.extra)
        return h, part

    # parts whose referenced candidate ids make them too large are halved (by users)
    def fits(us: slice, its: slice, ps: slice) -> bool:
        if cands is None or us.stop - us.start <= 1:
            return True
        _, ids = _local_candidates(cands[us], candidate_space or [])
        used = sum(u_cost[us]) - cand_share * (us.stop - us.start) + sum(i_cost[its]) + sum(p_cost[ps]) + _json_bytes(ids)
        return used <= budget

    final: list[tuple[slice, slice, slice]] = []
    todo = list(reversed(parts))
    while todo:
        us, its, ps = todo.pop()
        if fits(us, its, ps):
            final.append((us, its, ps))
            continue
        mid = (us.start + us.stop) // 2
        todo.append((slice(mid, us.stop), slice(its.stop, its.stop), slice(ps.stop, ps.stop)))
        todo.append((slice(us.start, mid), its, ps))
    return [ModelUpdate(*build(us, its, ps, n, len(final))) for n, (us, its, ps) in enumerate(final)]

