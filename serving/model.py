"""The served model: an immutable factor model with vectorised top-k, built from model updates.

A :class:`ServingModel` never changes after it is built; a new version is a new object that
*shares* everything the update did not touch. Rows appended by a delta are written past the end of
the rows the older model can see, so appending never copies and never disturbs a request still
reading the older version. Existing rows that change are copied first: the item table per array
(10k items x 32 factors is ~1.3 MB, ~0.1-0.3 ms), the user table per page of 64 rows
(:class:`_PagedTable`; whole arrays took 0.16-0.5 s per delta at 1M users, longer than the trainer's
200 ms between deltas), and the seen lists through a small overlay (:class:`_Seen`).

Examples
--------
>>> import numpy as np
>>> from trainer.updates import ModelUpdate
>>> snap = ModelUpdate({"version": 1, "kind": "snapshot", "global_mean": 3.0,
...                     "user_ids": ["u1"], "item_ids": ["a", "b", "c"]},
...                    {"user_factors": np.array([[1.0, 0.0]], np.float32), "user_bias": np.zeros(1, np.float32),
...                     "item_factors": np.array([[0.1, 0], [0.9, 0], [0.5, 0]], np.float32),
...                     "item_bias": np.zeros(3, np.float32), "item_popularity": np.array([5, 1, 3], np.float32)})
>>> m = ServingModel.build(None, [snap])
>>> [i for i, _ in m.recommend("u1", 2).items]
['b', 'c']
>>> m.recommend("someone-new", 2).fallback, [i for i, _ in m.recommend("someone-new", 2).items]
(True, ['a', 'c'])
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from typing import Any, cast

import numpy as np

from streamproc.errors import InvalidUpdate
from trainer.feedback import FEEDBACK_COLUMNS, FEEDBACK_TENSOR
from trainer.scoring import RankWeights, popularity_part, score_items
from trainer.updates import HEADER_SLACK, ITEM_TENSORS, ModelUpdate, UpdateHeader, ids_bytes

__all__ = ["ServingModel", "Recommendation", "RejectedUpdate"]

# user_candidate_rows is serving's own: the item rows of the update's user_candidates, stored + 1 (0 = none)
USER_TENSORS = ("user_factors", "user_bias", "user_candidate_scores", "user_candidate_rows", "user_mf_gain")
# item_feedback (serving.feedback): [n, len(FEEDBACK_COLUMNS)]; rows an update never carried read 0 (no comments)


class RejectedUpdate(InvalidUpdate):
    """An update that decodes but cannot be applied; ``reason`` is a bounded metric label."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Recommendation:
    """Top-k answer: ``items`` as ``(item_id, score)`` best first, the model ``version``, ``fallback``."""

    user_id: str
    items: list[tuple[str, float]]
    version: int
    fallback: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "items": [{"item_id": i, "score": round(s, 6)} for i, s in self.items],
            "version": self.version,
            "fallback": self.fallback,
        }


class _Table:
    """Rows of one entity (users or items): ids, id → row, and capacity-backed arrays.

    Shared between model versions: ``ids``/``index`` only ever grow, and a model bounds every
    lookup by its own row count ``n``, so rows appended for a newer version are invisible to it.
    """

    __slots__ = ("ids", "index", "arrays", "n")

    def __init__(self, ids: list[str], index: dict[str, int], arrays: dict[str, np.ndarray], n: int) -> None:
        self.ids, self.index, self.arrays, self.n = ids, index, arrays, n

    @classmethod
    def empty(cls, shapes: dict[str, tuple[int, ...]], dtypes: dict[str, Any] | None = None) -> _Table:
        dt = dtypes or {}
        return cls([], {}, {name: np.zeros((16, *tail), dt.get(name, np.float32)) for name, tail in shapes.items()}, 0)

    def view(self, name: str) -> np.ndarray:
        v = self.arrays[name][: self.n]
        v.flags.writeable = False
        return v

    def upsert(self, ids: Sequence[str], tensors: dict[str, np.ndarray], names: tuple[str, ...]) -> _Table:
        """A new table with ``ids`` rows set from ``tensors``; this table is left unchanged."""
        if not ids:
            return self
        rows, n, fresh = self._place(ids)
        touches_old = bool((rows < self.n).any())
        arrays = dict(self.arrays)
        for name in names:
            buf = arrays[name]
            if n > len(buf):  # grow by doubling: one copy per doubling, amortised O(1) per row
                grown = np.zeros((max(n, 2 * len(buf)), *buf.shape[1:]), buf.dtype)
                grown[: self.n] = buf[: self.n]
                buf = grown
            elif touches_old and name in tensors:
                buf = buf.copy()  # copy-on-write: older versions keep their rows
            if n > self.n:
                buf[self.n : n] = 0  # past-the-end rows may hold leftovers of a rejected update
            if name in tensors:
                buf[rows] = tensors[name]
            arrays[name] = buf
        return _Table(*self._commit(fresh), arrays, n)

    def _place(self, ids: Sequence[str]) -> tuple[np.ndarray, int, dict[str, int]]:
        """``(row of each id, the new row count, {new id: row})``: known ids keep their row, new
        ones are numbered from ``n`` in order of first appearance."""
        index = self.index
        n = self.n
        found = list(map(index.get, ids))  # C-speed lookups: a snapshot has ~10k ids
        fresh: dict[str, int] = {}
        if None not in found and (not found or max(cast("list[int]", found)) < n):
            rows = np.fromiter(found, np.int64, len(found))  # only existing rows
        elif found.count(None) == len(found) and len(set(ids)) == len(ids):
            rows = np.arange(n, n + len(ids), dtype=np.int64)  # only new, distinct rows
            fresh = dict(zip(ids, rows.tolist(), strict=False))
            n += len(ids)
        else:
            rows = np.empty(len(ids), np.int64)
            for j, key in enumerate(ids):
                r = found[j]
                if r is None or r >= self.n:  # new row (ids past our n are leftovers of a rejected update)
                    r = fresh.get(key)
                    if r is None:
                        r = fresh[key] = n
                        n += 1
                rows[j] = r
        return rows, n, fresh

    def _commit(self, fresh: dict[str, int]) -> tuple[list[str], dict[str, int]]:
        """The shared id list and index with ``fresh`` appended (see :meth:`_place`)."""
        index, id_list = self.index, self.ids
        # Older versions bound every lookup by their own n, so growing ids/index is invisible to them.
        for key in id_list[self.n :]:
            if index.get(key, -1) >= self.n:
                del index[key]
        del id_list[self.n :]
        index.update(fresh)  # rows were numbered from len(id_list) == self.n, in insertion order
        id_list.extend(fresh)
        return id_list, index


_PAGE_SHIFT = 6
_PAGE = 1 << _PAGE_SHIFT  # rows per page of the user table
_PAGE_MASK = _PAGE - 1


class _PagedRows:
    """Read-only rows ``[r]`` of one array of a :class:`_PagedTable` as one version sees it."""

    __slots__ = ("_pages", "_n")

    def __init__(self, pages: list[np.ndarray], n: int) -> None:
        self._pages, self._n = pages, n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, r: int) -> np.ndarray:
        if not 0 <= r < self._n:
            raise IndexError(f"row {r} of {self._n}")
        v = self._pages[r >> _PAGE_SHIFT][r & _PAGE_MASK]
        if isinstance(v, np.ndarray):  # a row of a 2-d array (1-d arrays give a scalar)
            v.flags.writeable = False
        return v


class _PagedTable(_Table):
    """A :class:`_Table` whose arrays are lists of pages of :data:`_PAGE` rows, for the users.

    An update copies only the pages holding existing rows it changes (a delta of 200 users copies
    at most 200 pages, ~7 MB, whatever the table's size) and the lists of page references (one
    pointer per 64 rows); new rows are written past the end, in place, as in :class:`_Table`.
    Rows are read one at a time (:meth:`rows`); there is no whole-array view.
    """

    __slots__ = ("proto",)

    def __init__(self, ids: list[str], index: dict[str, int], arrays: dict[str, list[np.ndarray]], n: int,
                 proto: dict[str, tuple[tuple[int, ...], Any]]) -> None:
        super().__init__(ids, index, cast("dict[str, np.ndarray]", arrays), n)
        self.proto = proto  # name -> (row shape, dtype)

    @classmethod
    def empty(cls, shapes: dict[str, tuple[int, ...]], dtypes: dict[str, Any] | None = None) -> _PagedTable:
        dt = dtypes or {}
        return cls([], {}, {name: [] for name in shapes}, 0, {name: (tail, dt.get(name, np.float32)) for name, tail in shapes.items()})

    def view(self, name: str) -> np.ndarray:
        raise TypeError("a paged table has no whole-array view: read rows with rows(name)[r]")

    def rows(self, name: str) -> _PagedRows:
        return _PagedRows(cast("list[np.ndarray]", self.arrays[name]), self.n)

    def upsert(self, ids: Sequence[str], tensors: dict[str, np.ndarray], names: tuple[str, ...]) -> _PagedTable:
        if not ids:
            return self
        rows, n, fresh = self._place(ids)
        order = np.argsort(rows, kind="stable")  # duplicate ids: the last one wins, as in _Table
        srows = rows[order]
        page_of = srows >> _PAGE_SHIFT
        cut = (np.flatnonzero(page_of[1:] != page_of[:-1]) + 1).tolist()
        groups = list(zip([0, *cut], [*cut, len(srows)], strict=True))
        old_n, n_pages = self.n, (n + _PAGE_MASK) >> _PAGE_SHIFT
        arrays: dict[str, Any] = dict(self.arrays)
        for name in names:
            tail, dtype = self.proto[name]
            pages = list(cast("list[np.ndarray]", self.arrays[name]))
            pages.extend(np.zeros((_PAGE, *tail), dtype) for _ in range(n_pages - len(pages)))
            if n > old_n and old_n & _PAGE_MASK:  # past-the-end rows may hold leftovers of a rejected update
                pages[old_n >> _PAGE_SHIFT][old_n & _PAGE_MASK : min(_PAGE, (old_n & _PAGE_MASK) + n - old_n)] = 0
            vals = tensors.get(name)
            if vals is not None:
                for a, b in groups:
                    p = int(page_of[a])
                    if srows[a] < old_n:
                        pages[p] = pages[p].copy()  # copy-on-write: older versions keep this page
                    pages[p][srows[a:b] & _PAGE_MASK] = vals[order[a:b]]
            arrays[name] = pages
        return _PagedTable(*self._commit(fresh), arrays, n, self.proto)


class _Seen(Mapping[str, tuple[str, ...]]):
    """user id → the (bounded) item ids whose feedback the model learned, shared between versions.

    A version's changes sit in an overlay on a base dict that no version modifies (None marks a
    user removed); :meth:`changed` copies only the overlay, and folds it into a new base once it
    holds an eighth as many users as the base (amortised O(1) per change; copying the whole dict
    per delta took ~50 ms at 1M users).
    """

    __slots__ = ("_base", "_over")

    def __init__(self, base: dict[str, tuple[str, ...]] | None = None, over: dict[str, tuple[str, ...] | None] | None = None) -> None:
        self._base = base if base is not None else {}
        self._over = over if over is not None else {}

    def __getitem__(self, user: str) -> tuple[str, ...]:
        if user not in self._over:
            return self._base[user]
        v = self._over[user]
        if v is None:
            raise KeyError(user)
        return v

    def __iter__(self) -> Iterator[str]:
        over = self._over
        yield from (x for x in self._base if x not in over)
        yield from (x for x, v in over.items() if v is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def changed(self, published: Iterable[tuple[str, str, float]], gone: Iterable[str], limit: int) -> _Seen:
        """A new map: ``gone`` users removed, then each ``(user, item, time)`` of ``published``
        appended to its user's items (kept to the newest ``limit``)."""
        over = dict(self._over)
        for user in gone:
            if user in self:
                over[user] = None
        if limit > 0:
            for user, item, _ in published:
                old = over[user] if user in over else self._base.get(user)
                old = old or ()
                if item not in old:
                    over[user] = (old + (item,))[-limit:]
        if len(over) <= max(1024, len(self._base) >> 3):
            return _Seen(self._base, over)
        base = {**self._base, **over}
        for user, v in over.items():
            if v is None:
                del base[user]
        return _Seen(cast("dict[str, tuple[str, ...]]", base))


def _check_shapes(tensors: dict[str, np.ndarray], factors: int | None) -> int | None:
    for name in ("user_factors", "item_factors"):
        arr = tensors.get(name)
        if arr is None:
            continue
        if arr.ndim != 2:
            raise RejectedUpdate(f"{name} must be 2-d, got shape {arr.shape}", reason="shape")
        if factors is None:
            factors = int(arr.shape[1])
        elif arr.shape[1] != factors:
            raise RejectedUpdate(f"{name} has {arr.shape[1]} factors, the model has {factors}", reason="shape")
    for name in ("user_bias", "item_bias", "item_popularity"):
        arr = tensors.get(name)
        if arr is not None and arr.ndim != 1:
            raise RejectedUpdate(f"{name} must be 1-d, got shape {arr.shape}", reason="shape")
    arr = tensors.get("item_log_popularity")
    if arr is not None and arr.ndim not in (1, 2):
        raise RejectedUpdate(f"item_log_popularity must be 1-d or 2-d, got shape {arr.shape}", reason="shape")
    arr = tensors.get(FEEDBACK_TENSOR)
    if arr is not None and (arr.ndim != 2 or arr.shape[1] != len(FEEDBACK_COLUMNS)):
        raise RejectedUpdate(f"{FEEDBACK_TENSOR} must have shape (n, {len(FEEDBACK_COLUMNS)}), got {arr.shape}", reason="shape")
    arr = tensors.get("user_candidate_scores")
    if arr is not None and arr.ndim != 2:
        raise RejectedUpdate(f"user_candidate_scores must be 2-d, got shape {arr.shape}", reason="shape")
    return factors


def _rows_lut(ids: Sequence[str], items: _Table) -> np.ndarray:
    """Item rows + 1 of ``ids`` (0: unknown to this version), with a trailing 0 that -1 pads index."""
    found = list(map(items.index.get, ids))  # C-speed lookups: a delta names ~15k candidate ids
    if None in found:
        found = [-1 if r is None else r for r in found]
    rows = np.array(found, np.int64).reshape(len(found))
    lut = np.where(rows < items.n, rows + 1, 0).astype(np.int32)  # rows past n: a newer version's (unknown here), -1 + 1 = 0
    return np.append(lut, np.int32(0))


def _snapshot_lut(updates: Sequence[ModelUpdate], items: _Table) -> np.ndarray | None:
    """A snapshot's ``snapshot_items`` positions (its chunks' ``item_ids`` joined in chunk order) as
    item rows + 1, with a trailing 0 for the -1 pads; None when its candidates name their ids
    per chunk (``candidate_item_ids``) or it has none."""
    total = {u.header.snapshot_items for u in updates if "user_candidates" in u.tensors and u.header.snapshot_items is not None}
    if not total:
        return None
    ordered = sorted(updates, key=lambda u: u.header.chunk)
    ids = [x for u in ordered for x in u.header.item_ids]
    if total != {len(ids)}:
        raise RejectedUpdate(f"snapshot {updates[0].header.version}: its chunks hold {len(ids)} items, "
                             f"its candidates index {sorted(total)}", reason="shape")
    return _rows_lut(ids, items)


def _candidate_rows(update: ModelUpdate, items: _Table, width: int, snapshot_lut: np.ndarray | None = None) -> np.ndarray | None:
    """The update's candidates (the int32 ``user_candidates`` tensor indexing ``candidate_item_ids``,
    or the snapshot's items through ``snapshot_lut`` (:func:`_snapshot_lut`), or the per-user id
    lists of older trainers) as item rows + 1 (0 = none or unknown)."""
    h, scores, cands = update.header, update.tensors.get("user_candidate_scores"), update.tensors.get("user_candidates")
    legacy = h.user_candidates
    if scores is None and cands is None and legacy is None:
        return None
    if scores is None or (cands is None and legacy is None):
        raise RejectedUpdate("user candidates and user_candidate_scores come together", reason="shape")
    if scores.shape[1] != width:
        raise RejectedUpdate(f"user_candidate_scores has {scores.shape[1]} columns, the model has {width}", reason="shape")
    index, n = items.index, items.n
    if cands is not None and h.snapshot_items is not None:
        if snapshot_lut is None:
            raise RejectedUpdate(f"update {h.version}: candidates index a whole snapshot's items outside a snapshot", reason="shape")
        return snapshot_lut[cands]
    if cands is not None:  # the tensor form (decode checked dtype, shape and index range)
        return _rows_lut(h.candidate_item_ids or [], items)[cands]
    assert legacy is not None  # older trainers: item ids per user in the header (rolling upgrade)
    out = np.zeros((len(h.user_ids), width), np.int32)
    for u, row in enumerate(legacy):
        if len(row) > width:
            raise RejectedUpdate(f"user_candidates row {u} has more than {width} ids", reason="shape")
        for c, key in enumerate(row):
            r = index.get(key)
            if r is not None and r < n:
                out[u, c] = r + 1
    return out


class _PopularOrder:
    """Item rows by popularity, best first (ties by row, as a stable sort gives them), computed as
    far as it is read: the first ``n`` by a partial selection, the whole order only for a deeper
    read. A whole argsort per model version was ~10 % of a replica's time applying deltas at 100k
    items (1M-user loop, ``py-spy``); requests and pushes read the first few hundred."""

    __slots__ = ("_x", "_head", "_full")

    def __init__(self, by: np.ndarray) -> None:
        self._x = by  # higher = more popular; never modified (a model version's view)
        self._head: np.ndarray | None = None
        self._full: np.ndarray | None = None

    def head(self, n: int) -> np.ndarray:
        """The ``n`` most popular rows, best first."""
        x = self._x
        if self._full is not None or n >= len(x) // 4:
            return self.full()[:n]
        h = self._head
        if h is None or len(h) < n:
            m = max(n, 1024)
            if m >= len(x):
                return self.full()[:n]
            thr = x[np.argpartition(-x, m - 1)[m - 1]]
            h = np.flatnonzero(x >= thr)  # every row tied with the m-th: the stable order among them is by row
            h = h[np.argsort(-x[h], kind="stable")]
            self._head = h
        return h[:n]

    def full(self) -> np.ndarray:
        if self._full is None:
            self._full = np.argsort(-self._x, kind="stable")
        return self._full


class ServingModel:
    """One immutable model version: ranks all items by :func:`trainer.scoring.score_items` with the
    blend weights of the update's ``ranking`` header (updates without it: ``global_mean + b_u + b_i
    + p_u · q_i``).

    Build with :meth:`build` (from a snapshot's chunks, or a base model plus a delta).
    ``seen`` maps a user to the (bounded) tuple of item ids whose feedback the model learned,
    for ``exclude_seen``.
    """

    __slots__ = ("version", "global_mean", "factors", "_users", "_items", "seen", "_popular", "header", "_if", "_ib", "_uf", "_ub",
                 "_dead_users", "_dead_items", "ranking", "_lp", "_lp_max", "_cs", "_cr", "_pop_part", "_mg", "_ann")

    def __init__(self, version: int, global_mean: float, factors: int, users: _PagedTable, items: _Table,
                 seen: _Seen, header: UpdateHeader, popular: _PopularOrder | None = None,
                 dead_users: frozenset[str] = frozenset(), dead_items: np.ndarray | None = None,
                 ranking: RankWeights | None = None, mf_gain_known: bool = False, ann: Any = None) -> None:
        self.version = version
        self._ann = ann  # serving.ann.VersionIndex above RECO_ANN_MIN_ITEMS items, else None (exact top-k)
        self.ranking = ranking  # None: an update without the ranking blend (scores = the factor model)
        self.global_mean = float(global_mean)
        self.factors = factors
        self._users, self._items = users, items
        self.seen = seen
        self.header = header
        self._uf, self._ub = users.rows("user_factors"), users.rows("user_bias")
        self._if, self._ib = items.view("item_factors"), items.view("item_bias")
        lp = items.view("item_log_popularity")
        if lp.ndim == 2:  # one column per popularity half-life: serve the one the trainer chose
            lp = lp[:, min(max(int(ranking.horizon if ranking is not None else 0), 0), max(lp.shape[1] - 1, 0))] if lp.shape[1] else np.zeros(items.n, np.float32)
        self._lp = lp
        # expired items count as the trainer counts them (not at all), as in a snapshot, which leaves them out
        live = lp if dead_items is None or not len(dead_items) else np.delete(lp, dead_items)
        self._lp_max = float(live.max()) if len(live) else 0.0
        self._cs, self._cr = users.rows("user_candidate_scores"), users.rows("user_candidate_rows")
        # per-user weight of the factor part; an update stream without it (older trainer): 1
        self._mg = users.rows("user_mf_gain") if mf_gain_known else None
        self._pop_part = popularity_part(ranking, self._lp, self._lp_max) if ranking is not None else None
        if popular is None:
            popular = _PopularOrder(self._lp if ranking is not None else items.view("item_popularity"))
        self._popular = popular
        self._dead_users = dead_users  # expired by the trainer (row TTL): unknown again
        self._dead_items = np.empty(0, np.int64) if dead_items is None else dead_items  # never recommended

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, base: ServingModel | None, updates: Sequence[ModelUpdate], *, seen_per_user: int = 1000, ann_min_items: int = 0,
              ann_fetch: int = 200) -> ServingModel:
        """Apply ``updates`` (decoded :class:`~trainer.updates.ModelUpdate`): all chunks of one
        snapshot, or one delta on top of ``base``. Raises :class:`RejectedUpdate` (with
        ``reason``) when the update cannot be applied; ``base`` is never modified."""
        if not updates:
            raise ValueError("updates: at least one update is required")
        head = updates[0].header
        kind, version = head.kind, head.version
        if kind == "snapshot":
            factors: int | None = None
            for u in updates:
                factors = _check_shapes(u.tensors, factors)
            if factors is None:
                factors = base.factors if base is not None else 0
            width = max((int(u.tensors["user_candidate_scores"].shape[1]) for u in updates if "user_candidate_scores" in u.tensors), default=0)
            users = _PagedTable.empty({"user_factors": (factors,), "user_bias": (), "user_candidate_scores": (width,),
                                  "user_candidate_rows": (width,), "user_mf_gain": ()}, {"user_candidate_rows": np.int32})
            lp_tail = next((u.tensors["item_log_popularity"].shape[1:] for u in updates if "item_log_popularity" in u.tensors), ())
            items = _Table.empty({"item_factors": (factors,), "item_bias": (), "item_popularity": (), "item_log_popularity": lp_tail,
                                  FEEDBACK_TENSOR: (len(FEEDBACK_COLUMNS),)})
            seen = base.seen if base is not None else _Seen()
            dead_users: set[str] = set()
            dead_items: set[int] = set()
        else:
            if base is None:
                raise RejectedUpdate(f"delta {version} arrived before any snapshot", reason="no_base")
            if head.base_version != base.version:
                raise RejectedUpdate(f"delta {version} applies to version {head.base_version}, serving {base.version}", reason="gap")
            factors = base.factors
            width = int(base._users.proto["user_candidate_scores"][0][0])
            _check_shapes(updates[0].tensors, factors if factors else None)
            lp = updates[0].tensors.get("item_log_popularity")
            if lp is not None and lp.shape[1:] != base._items.arrays["item_log_popularity"].shape[1:]:
                raise RejectedUpdate(f"item_log_popularity has shape {lp.shape}, the model has columns "
                                     f"{base._items.arrays['item_log_popularity'].shape[1:]}", reason="shape")
            users, items, seen = base._users, base._items, base.seen
            dead_users, dead_items = set(base._dead_users), set(base._dead_items.tolist())
        global_mean = head.global_mean if head.global_mean is not None else (base.global_mean if base is not None else 0.0)
        ranking = head.ranking if head.ranking is not None else (base.ranking if base is not None and kind == "delta" else None)
        pending = []
        for u in updates:  # every chunk's items first: a user's candidates may sit in a later chunk
            iid = u.header.item_ids
            items = items.upsert(iid, u.tensors, ITEM_TENSORS)
            pending.append((u, iid))
        lut = _snapshot_lut(updates, items) if kind == "snapshot" else None
        for u, iid in pending:
            uid = u.header.user_ids
            tensors = u.tensors
            rows = _candidate_rows(u, items, width, lut)
            if rows is not None:
                tensors = {**tensors, "user_candidate_rows": rows}
            users = users.upsert(uid, tensors, USER_TENSORS)
            # Rows the trainer expired (row TTL) are dead until a later update brings them back.
            dead_users.update(u.header.expired_user_ids)
            for key in u.header.expired_item_ids:
                r = items.index.get(key)
                if r is not None and r < items.n:
                    dead_items.add(r)
            if dead_users and uid:
                dead_users.difference_update(uid)
            if dead_items and iid:
                dead_items.difference_update(items.index[key] for key in iid)
            # expired or erased users: their seen lists go with them (a fresh profile starts empty)
            if u.header.expired_user_ids or (u.header.published and seen_per_user > 0):
                seen = seen.changed(u.header.published or (), u.header.expired_user_ids, seen_per_user)
        if kind == "snapshot" and seen:  # users the trainer no longer has (erased, expired) keep no seen list
            known = users.index
            seen = _Seen({x: s for x, s in seen.items() if x in known})
        popular = None
        if kind == "delta" and base is not None and items.n == base._items.n and ranking == base.ranking and not any(
                name in u.tensors for u in updates for name in ("item_popularity", "item_log_popularity")):
            popular = base._popular  # ranking unchanged: skip the argsort
        dead = np.array(sorted(dead_items), np.int64)
        if kind == "snapshot":
            mf_gain_known = any("user_mf_gain" in u.tensors for u in updates)
        else:
            mf_gain_known = base is not None and base._mg is not None
        from serving.ann import index_for  # approximate top-k for big catalogues (RECO_ANN_MIN_ITEMS)

        ann = index_for(base._ann if base is not None else None, kind, items, [i for _, i in pending], ann_min_items, ann_fetch)
        return cls(version, global_mean, int(factors), users, items, seen, head, popular, frozenset(dead_users), dead, ranking,
                   mf_gain_known, ann)

    def snapshot(self, header: UpdateHeader, max_bytes: int) -> tuple[int, Iterator[ModelUpdate]]:
        """This version's live rows as a snapshot (:mod:`trainer.updates`; expired users and items
        left out), so that a replica built from it serves what this one serves: ``(chunks, the
        chunks one by one)``, each at most ~``max_bytes`` encoded, items first, every one with
        ``header``'s version and fields. Candidates index the snapshot's items (``snapshot_items``).
        The chunks are gathered from the user pages as they are taken: no copy of the whole
        table (at 1M users that copy and a generic chunking took most of a publication)."""
        users, items = self._users, self._items
        nu, ni = users.n, items.n
        alive = np.ones(ni, bool)
        alive[self._dead_items] = False
        ir = np.flatnonzero(alive)
        item_ids = [items.ids[r] for r in ir.tolist()]
        ur = np.arange(nu)
        user_ids = users.ids[:nu]
        if self._dead_users:
            dead = self._dead_users
            ur = np.flatnonzero(np.fromiter((x not in dead for x in user_ids), bool, nu))
            user_ids = [user_ids[r] for r in ur.tolist()]
        width = int(users.proto["user_candidate_scores"][0][0])
        u_names = ["user_factors", "user_bias"] + (["user_mf_gain"] if self._mg is not None else []) + (
            ["user_candidate_scores", "user_candidate_rows"] if width else [])
        i_names = [n for n in ITEM_TENSORS if n in items.arrays]
        u_row = sum(int(np.prod(users.proto[n][0], dtype=np.int64)) * 4 for n in u_names)
        i_row = sum(int(np.prod(items.arrays[n].shape[1:], dtype=np.int64)) * 4 for n in i_names)
        budget = max_bytes - HEADER_SLACK

        def cuts(ids: list[str], row: int) -> list[tuple[int, int]]:
            """Ranges of rows whose costs add up to at most ``budget`` each (one oversized row alone)."""
            if not ids:
                return []
            cost = np.asarray(ids_bytes(ids, row), np.int64)
            per = max(budget - int(cost.max()), 1)
            group = np.cumsum(cost) // per
            starts = [0, *(np.flatnonzero(np.diff(group)) + 1).tolist()]
            return list(zip(starts, [*starts[1:], len(ids)], strict=True))

        item_parts, user_parts = cuts(item_ids, i_row), cuts(user_ids, u_row)
        total = max(1, len(item_parts) + len(user_parts))
        position = np.full(ni + 1, -1, np.int32)  # stored candidate rows + 1 (0 = none) -> position in item_ids
        position[ir + 1] = np.arange(len(ir), dtype=np.int32)
        fields = {f.name: getattr(header, f.name) for f in dataclass_fields(header)}
        fields.update(kind="snapshot", chunks=total, snapshot_items=len(item_ids) if width else None, candidate_item_ids=None,
                      user_candidates=None, published=[], expired_user_ids=[], expired_item_ids=[])

        def part(n: int, u_ids: list[str], i_ids: list[str], tensors: dict[str, np.ndarray]) -> ModelUpdate:
            return ModelUpdate(UpdateHeader(**{**fields, "chunk": n, "user_ids": u_ids, "item_ids": i_ids}), tensors)

        def gen() -> Iterator[ModelUpdate]:
            n = 0
            for a, b in item_parts:
                rows = ir[a:b]
                yield part(n, [], item_ids[a:b], {name: items.arrays[name][rows] for name in i_names})
                n += 1
            for a, b in user_parts:
                rows = ur[a:b]
                p0 = int(rows[0]) >> _PAGE_SHIFT
                p1 = (int(rows[-1]) >> _PAGE_SHIFT) + 1
                at = rows - (p0 << _PAGE_SHIFT)
                tensors = {name: np.concatenate(cast("list[np.ndarray]", users.arrays[name])[p0:p1])[at] for name in u_names}
                if width:
                    tensors["user_candidates"] = position[tensors.pop("user_candidate_rows")]
                yield part(n, user_ids[a:b], [], tensors)
                n += 1
            if n == 0:
                yield part(0, [], [], {})

        return total, gen()

    # ------------------------------------------------------------------ reading
    @property
    def n_users(self) -> int:
        return self._users.n

    @property
    def n_items(self) -> int:
        return self._items.n

    def _user_row(self, user_id: str) -> int | None:
        r = self._users.index.get(user_id)
        if r is None or r >= self._users.n or (self._dead_users and user_id in self._dead_users):
            return None
        return r

    def has_user(self, user_id: str) -> bool:
        return self._user_row(user_id) is not None

    def item_row(self, item_id: str) -> int | None:
        """Row of ``item_id`` in this version; None when unknown or expired."""
        r = self._items.index.get(item_id)
        if r is None or r >= self._items.n or (len(self._dead_items) and r in self._dead_items):
            return None
        return r

    def item_feedback(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """``(item ids by row, read-only item_feedback rows [n, len(FEEDBACK_COLUMNS)], rows of
        expired items)`` for :mod:`serving.feedback`. The id list is shared, not copied: it may run
        past ``n`` (rows of newer versions); index it only with rows of the feedback table."""
        return self._items.ids, self._items.view(FEEDBACK_TENSOR), self._dead_items

    def item_ids(self) -> list[str]:
        return self._items.ids[: self._items.n]

    def user_vector(self, user_id: str) -> np.ndarray | None:
        r = self._user_row(user_id)
        return None if r is None else self._uf[r]

    def score(self, user_id: str, item_ids: Iterable[str]) -> list[float | None]:
        """Scores of the given items for the user, as :meth:`recommend` ranks them (None for
        unknown items or users)."""
        r = self._user_row(user_id)
        out: list[float | None] = []
        scores = self._scores(r) if r is not None and self.ranking is not None else None
        for i in item_ids:
            c = self._items.index.get(i)
            if r is None or c is None or c >= self._items.n:
                out.append(None)
            elif scores is not None:
                out.append(float(scores[c]))
            else:
                out.append(float(self.global_mean + self._ub[r] + self._ib[c] + self._uf[r] @ self._if[c]))
        return out

    def _scores(self, r: int) -> np.ndarray:
        """Every item's score for user row ``r``: :func:`trainer.scoring.score_items`, the function
        the trainer is benchmarked with, on this version's rows."""
        assert self.ranking is not None
        return score_items(self.ranking, pop_part=self._pop_part, item_factors=self._if,
                           item_bias=self._ib, user_vector=self._uf[r], cand_rows=self._cr[r].astype(np.int64) - 1,
                           cand_vals=self._cs[r], mf_gain=float(self._mg[r]) if self._mg is not None else 1.0)

    def _seen_rows(self, user_id: str) -> np.ndarray:
        seen = self.seen.get(user_id)
        if not seen:
            return np.empty(0, np.int64)
        index, n = self._items.index, self._items.n
        rows = [r for r in (index.get(i) for i in seen) if r is not None and r < n]  # unknown items ignored
        return np.fromiter(rows, np.int64, len(rows))

    @property
    def item_row_space(self) -> tuple[list[str], int]:
        """``(ids, n)``: the id list shared by versions that number their item rows alike, and this
        version's row count. Rows computed by :meth:`item_rows` stay valid while both are the same."""
        return self._items.ids, self._items.n

    def item_rows(self, item_ids: Iterable[str]) -> np.ndarray:
        """Rows of the known ``item_ids`` in this version (unknown ids skipped), for :meth:`recommend`'s masks."""
        index, n = self._items.index, self._items.n
        rows = [r for r in map(index.get, item_ids) if r is not None and r < n]
        return np.fromiter(rows, np.int64, len(rows))

    def recommend(self, user_id: str, k: int = 10, exclude_seen: bool = True, *, allowed: np.ndarray | None = None,
                  blocked: np.ndarray | None = None) -> Recommendation:
        """Top-``k`` items for ``user_id``; unknown users get the popularity fallback.

        ``allowed`` (item rows, :meth:`item_rows`) restricts the answer to those rows and
        ``blocked`` removes rows (request-time rules, :mod:`serving.catalog`); both are applied
        before the top-k, so the answer has ``k`` items whenever ``k`` eligible items exist.
        """
        if k < 1:
            raise ValueError(f"k: must be >= 1, got {k}")
        n = self._items.n
        excluded = self._seen_rows(user_id) if exclude_seen else np.empty(0, np.int64)
        if len(self._dead_items):
            excluded = np.concatenate([excluded, self._dead_items])
        if blocked is not None and len(blocked):
            excluded = np.concatenate([excluded, blocked])
        r = self._user_row(user_id)
        if allowed is not None:
            return self._recommend_among(user_id, k, r, allowed, excluded)
        if r is None or n == 0:
            return self._fallback(user_id, k, excluded)
        if self.ranking is not None and self._ann is not None:
            hit = self._approximate(user_id, r, k, excluded)
            if hit is not None:
                return hit
        if self.ranking is not None:
            scores = self._scores(r)
        else:
            scores = self._if @ self._uf[r]
            scores += self._ib
            scores += self.global_mean + float(self._ub[r])
        if len(excluded):
            scores[excluded] = -np.inf
        kk = min(k, n)
        top = np.argpartition(scores, n - kk)[n - kk :] if kk < n else np.arange(n)
        top = top[np.argsort(-scores[top], kind="stable")]
        ids = self._items.ids
        items = [(ids[c], float(scores[c])) for c in top.tolist() if scores[c] != -np.inf]
        return Recommendation(user_id, items, self.version, False)

    def _recommend_among(self, user_id: str, k: int, r: int | None, allowed: np.ndarray, excluded: np.ndarray) -> Recommendation:
        """Top-``k`` among the ``allowed`` rows minus ``excluded`` (an exact masked scan)."""
        n = self._items.n
        ok = np.zeros(n, bool)
        ok[allowed[allowed < n]] = True
        if len(excluded):
            ok[excluded] = False
        cand = np.flatnonzero(ok)
        ids = self._items.ids
        if r is None:  # unknown user: the most popular eligible items
            everything = self._popular.full()
            order = everything[ok[everything]][:k]
            if self.ranking is not None:
                pop = np.exp(self._lp[order].astype(np.float64) - self._lp_max)
            else:
                pop = self._items.arrays["item_popularity"][order]
            return Recommendation(user_id, [(ids[c], float(p)) for c, p in zip(order.tolist(), pop.tolist(), strict=False)], self.version, True)
        if not len(cand):
            return Recommendation(user_id, [], self.version, False)
        if self.ranking is not None:
            sub = self._scores(r)[cand]
        else:
            sub = self._if[cand] @ self._uf[r]
            sub += self._ib[cand]
            sub += self.global_mean + float(self._ub[r])
        m = len(cand)
        kk = min(k, m)
        top = np.argpartition(sub, m - kk)[m - kk :] if kk < m else np.arange(m)
        top = top[np.argsort(-sub[top], kind="stable")]
        return Recommendation(user_id, [(ids[c], float(s)) for c, s in zip(cand[top].tolist(), sub[top].tolist(), strict=False)], self.version, False)

    def _approximate(self, user_id: str, r: int, k: int, excluded: np.ndarray) -> Recommendation | None:
        """Top-``k`` through the item index (:mod:`serving.ann`); None: scan exactly instead."""
        w, g = self.ranking, float(self._mg[r]) if self._mg is not None else 1.0
        assert w is not None and self._pop_part is not None
        got = self._ann.top_k(k=min(k, self._items.n), pop_part=self._pop_part, popular=self._popular.head(max(self._ann.fetch, k)), item_factors=self._if,
                              item_bias=self._ib, user_vector=self._uf[r], c=w.mf * g / w.rating_span if w.mf else 0.0,
                              cand_rows=self._cr[r].astype(np.int64) - 1, cand_vals=self._cs[r], w_knn=w.knn, excluded=excluded)
        if got is None:
            return None
        ids = self._items.ids
        return Recommendation(user_id, [(ids[c], float(s)) for c, s in zip(got[0].tolist(), got[1].tolist(), strict=False)], self.version, False)

    def _fallback(self, user_id: str, k: int, excluded: np.ndarray) -> Recommendation:
        ids = self._items.ids
        if self.ranking is not None:  # the same popularity as a known user's blend, relative to the top
            pop = np.exp(self._lp.astype(np.float64) - self._lp_max)
        else:
            pop = self._items.arrays["item_popularity"]
        skip = set(excluded.tolist())
        items: list[tuple[str, float]] = []
        for c in self._popular.head(k + len(skip)).tolist():
            if c in skip:
                continue
            items.append((ids[c], float(pop[c])))
            if len(items) == k:
                break
        return Recommendation(user_id, items, self.version, True)

