"""Sequential item co-occurrence ("session item-kNN"), learned online event by event.

Each user keeps a ring of their last ``window`` feedback items with a signed weight (positive for
liked, negative for disliked). A new positive event on item ``j`` adds, for every item ``h`` in the
ring, ``pair_decay ** age(h) * w_h * w_j`` to the co-occurrence ``C[h, j]`` and ``C[j, h]``
(``age`` = how many newer items the ring holds). A user's neighbourhood score of item ``j`` is::

    knn(u, j) = Σ_{h in ring(u)} decay ** age(h) * w_h * C[h, j] / (n_h ** alpha * n_j ** beta)

with ``n_x`` the positive weight item ``x`` received. Items the user disliked (negative ``w_h``)
push their neighbours *down*. Only the ``n_candidates`` best items per user are exported, scaled
so the strongest is a gain that depends on how many events the profile holds (by default
``min(1, events / confident)``; :class:`~trainer.model.HybridMF` learns it for young profiles):
that sparse vector is what serving adds to the dense part of the score (see :mod:`trainer.scoring`).

Why this shape (measured with ``reco bench quality`` on ml-latest-small, full catalogue,
test-then-train): the plain co-occurrence kNN over a user's whole history reached HR@10 0.078; a
window of the last 20 items with recency weights 0.85 and pair weights 0.95 reached 0.14. Users'
next items follow what they did *just now* far more than what they did years ago.

Storage: a user's ring holds its first ``_SHORT`` positions inline (the profiles of 1-4 events
most users of a large service have) and the rest in a row of a long table, given at the user's
``_SHORT + 1``-th event: 40 bytes per user instead of ``8 * window`` until then (see
:class:`Rings`). Each pair is two adjacent entries ``(row, col, value)`` (one in each item's row) in flat
arrays, each row a linked list (``head``/``next``) so a row scan touches only its own entries, and
an open-addressing hash ``{lo, hi} -> entry`` (key and entry side by side) for increments. All of
it is plain numpy arrays (checkpointed in safetensors).

Examples
--------
>>> import numpy as np
>>> knn = SequentialKNN(window=5)
>>> knn.learn(np.array([0, 0, 1, 1, 2], np.int32), np.array([0, 1, 0, 1, 0], np.int32),
...           np.ones(5, np.float32), n_users=3, n_items=2)
>>> rows, vals = knn.candidates(np.array([2], np.int32), n_items=2)
>>> int(rows[0, 0]), bool(vals[0, 0] > 0)
(1, True)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from numba import njit

__all__ = ["SequentialKNN", "Rings"]

_SHORT = 4  # ring positions held inline per user (HybridMF's young profiles: 1-4 events)

_EMPTY = np.int64(0)  # an empty hash slot: no pair has key 0 (keys are lo << 32 | hi with lo < hi);
# zero-filled tables come from calloc, so growing them costs no explicit fill


class Rings(NamedTuple):
    """Each user's last ``window`` feedback items: event ``q`` of user ``u`` sits at ring position
    ``q % window``; positions below ``_SHORT`` in ``items``/``weights[u]``, the others in row
    ``long_row[u]`` of ``long_items``/``long_weights`` (at position minus ``_SHORT``). Long row 0 is
    never given (stays empty): ``long_row`` 0 means none. Empty positions: item -1, weight 0."""

    items: np.ndarray  # int32 [user rows, _SHORT]
    weights: np.ndarray  # float32 [user rows, _SHORT]: signed feedback strength, 0 = not counted
    length: np.ndarray  # int32 [user rows]: events the ring has taken in
    long_row: np.ndarray  # int32 [user rows]
    long_items: np.ndarray  # int32 [long rows, window - _SHORT]
    long_weights: np.ndarray  # float32 [long rows, window - _SHORT]


@njit(cache=True)
def _ring_get(ring, u, pos):  # pragma: no cover - compiled
    """(item, weight) at ring position ``pos`` of user ``u``."""
    s = ring.items.shape[1]
    if pos < s:
        return ring.items[u, pos], ring.weights[u, pos]
    r = ring.long_row[u]
    return ring.long_items[r, pos - s], ring.long_weights[r, pos - s]


@njit(cache=True)
def _ring_put(ring, u, pos, item, w):  # pragma: no cover - compiled
    s = ring.items.shape[1]
    if pos < s:
        ring.items[u, pos] = item
        ring.weights[u, pos] = w
    else:
        r = ring.long_row[u]
        ring.long_items[r, pos - s] = item
        ring.long_weights[r, pos - s] = w


@njit(cache=True)
def _hash(key: np.int64, mask: np.int64) -> np.int64:
    h = np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)
    return np.int64(h >> np.uint64(17)) & mask


@njit(cache=True)
def _pair(ht, a, b, erow, ecol, eval_, enext, head, n_ent):  # pragma: no cover - compiled
    """Entry index of the pair {a, b}: entry e sits in row min(a, b), its twin e + 1 in the other
    row, both holding the same value. Created (value 0) if absent; n_ent[0] counts entries."""
    lo, hi = (a, b) if a < b else (b, a)
    key = (np.int64(lo) << 32) | np.int64(hi)
    mask = np.int64(len(ht) - 1)
    s = _hash(key, mask)
    while True:
        k = ht[s, 0]
        if k == key:
            return ht[s, 1]
        if k == _EMPTY:
            e = n_ent[0]
            n_ent[0] += 2
            ht[s, 0] = key
            ht[s, 1] = e
            for x, row, col in ((e, lo, hi), (e + 1, hi, lo)):
                erow[x] = row
                ecol[x] = col
                eval_[x] = 0.0
                enext[x] = head[row]
                head[row] = x
            return e
        s = (s + 1) & mask


@njit(cache=True)
def _weakest(top, eval_, row):  # pragma: no cover - compiled
    """Slot and value of the row's weakest kept entry (smallest value, then the higher entry number)."""
    mi = 0
    mv = eval_[top[row, 0]]
    for t in range(1, top.shape[1]):
        x = eval_[top[row, t]]
        if x < mv or (x == mv and top[row, t] > top[row, mi]):
            mv = x
            mi = t
    return mi, mv


@njit(cache=True)
def _offer(top, topn, topmin, topslot, intop, eval_, row, e):  # pragma: no cover - compiled
    """Entry ``e`` of ``row`` (its value just grew) joins the row's strongest ``K`` when it beats
    the weakest there (by value, then the lower entry number). Pair values only grow, so the kept
    set is exactly the row's top ``K`` by that order whatever order the values grew in (a restored
    model rebuilds the same set). ``topslot``/``topmin``: the weakest's slot and its value when last
    found (it may have grown since: then it is looked for again)."""
    n = topn[row]
    if n < top.shape[1]:
        if intop[e]:
            return
        top[row, n] = e
        intop[e] = 1
        topn[row] = n + 1
        if n + 1 == top.shape[1]:
            topslot[row], topmin[row] = _weakest(top, eval_, row)
        return
    v = eval_[e]
    if v < topmin[row] or intop[e]:  # most offers end here, before touching the per-entry flags
        return
    mi = topslot[row]
    mv = eval_[top[row, mi]]
    if mv != topmin[row]:  # the weakest grew since: find the weakest now
        mi, mv = _weakest(top, eval_, row)
        topslot[row], topmin[row] = mi, mv
        if v < mv:
            return
    if v > mv or e < top[row, mi]:
        intop[top[row, mi]] = 0
        top[row, mi] = e
        intop[e] = 1
        topslot[row], topmin[row] = _weakest(top, eval_, row)


@njit(cache=True)
def _build_top(n_ent, erow, eval_, top, topn, topmin, topslot, intop):  # pragma: no cover - compiled
    """Every row's strongest ``K`` entries from scratch (after entries were renumbered)."""
    for r in range(len(topn)):
        topn[r] = 0
        topmin[r] = 0.0
    for e in range(len(intop)):
        intop[e] = 0
    for e in range(n_ent):
        _offer(top, topn, topmin, topslot, intop, eval_, erow[e], e)


@njit(cache=True)
def _learn(u_rows, i_rows, weights, ring, window, cnt, head, erow, ecol, eval_, enext, ht, n_ent, pair_decay,
           top, topn, topmin, topslot, intop):  # pragma: no cover - compiled
    for n in range(len(u_rows)):
        w = weights[n]
        if w == 0.0:
            continue
        u = u_rows[n]
        j = i_rows[n]
        m = ring.length[u]
        lo = m - window if m > window else 0
        if w > 0.0:
            pd = 1.0
            for q in range(m - 1, lo - 1, -1):
                h, wh = _ring_get(ring, u, q % window)
                if h != j and wh > 0.0:
                    inc = w * wh * pd
                    e = _pair(ht, h, j, erow, ecol, eval_, enext, head, n_ent)
                    eval_[e] += inc
                    eval_[e + 1] += inc
                    _offer(top, topn, topmin, topslot, intop, eval_, erow[e], e)
                    _offer(top, topn, topmin, topslot, intop, eval_, erow[e + 1], e + 1)
                pd *= pair_decay
            cnt[j] += w
        # the item moves to the newest ring position (an older occurrence stops counting)
        for q in range(lo, m):
            h, wh = _ring_get(ring, u, q % window)
            if h == j:
                _ring_put(ring, u, q % window, h, np.float32(0.0))
        _ring_put(ring, u, m % window, j, w)
        ring.length[u] = m + 1


@njit(cache=True)
def _candidates(users, ring, window, cnt, nbr, nbr_n, ecol, eval_, alive, decay, alpha, beta, gain, n_out, acc, mark, tmp, out_rows, out_vals):  # pragma: no cover - compiled
    for x in range(len(users)):
        u = users[x]
        m = ring.length[u]
        lo = m - window if m > window else 0
        n_mark = 0
        for q in range(m - 1, lo - 1, -1):
            h, wh = _ring_get(ring, u, q % window)
            if wh == 0.0 or not alive[h]:
                continue
            w = wh * decay ** (m - 1 - q) / (cnt[h] ** alpha if cnt[h] > 0 else 1.0)
            for t in range(nbr_n[h]):  # the item's strongest neighbours (all of them up to K)
                e = nbr[h, t]
                c = ecol[e]
                if acc[c] == 0.0:
                    mark[n_mark] = c
                    n_mark += 1
                acc[c] += w * eval_[e]
                if acc[c] == 0.0:
                    acc[c] = 1e-30  # keep it marked
        # the user's own ring is never a candidate
        for q in range(lo, m):
            h, _ = _ring_get(ring, u, q % window)
            if h >= 0 and acc[h] != 0.0:
                acc[h] = -np.inf
        n_val = 0
        for t in range(n_mark):
            c = mark[t]
            v = acc[c]
            acc[c] = 0.0
            if v == -np.inf or not alive[c] or cnt[c] <= 0:
                continue
            mark[n_val] = c
            tmp[n_val] = v / cnt[c] ** beta
            n_val += 1
        # keep the n_out largest |v| (negative scores push items down, so they are kept too)
        thr = 0.0
        if n_val > n_out:
            absv = np.abs(tmp[:n_val])
            thr = np.partition(absv, n_val - n_out)[n_val - n_out]
        k = 0
        for t in range(n_val):
            if k < n_out and abs(tmp[t]) > thr:
                out_rows[x, k] = mark[t]
                out_vals[x, k] = tmp[t]
                k += 1
        if k < n_out and n_val > n_out:  # ties at the threshold: the lower item rows (whatever the walk order)
            n_tied = 0
            for t in range(n_val):
                if abs(tmp[t]) == thr:
                    n_tied += 1
            tied = np.empty(n_tied, np.int64)
            n_tied = 0
            for t in range(n_val):
                if abs(tmp[t]) == thr:
                    tied[n_tied] = t
                    n_tied += 1
            by_row = np.argsort(mark[tied])
            for a in range(len(tied)):
                if k < n_out:
                    t = tied[by_row[a]]
                    out_rows[x, k] = mark[t]
                    out_vals[x, k] = tmp[t]
                    k += 1
        # scaled so the strongest is gain[events - 1] (the last entry for longer profiles)
        top = 0.0
        for a in range(k):
            if abs(out_vals[x, a]) > top:
                top = abs(out_vals[x, a])
        if top > 0:
            scale = gain[min(m, len(gain)) - 1] / top
            for a in range(k):
                out_vals[x, a] *= scale
        # best first (insertion sort of at most n_out entries; ties by row)
        for a in range(1, k):
            rv, rr = out_vals[x, a], out_rows[x, a]
            b = a - 1
            while b >= 0 and (out_vals[x, b] < rv or (out_vals[x, b] == rv and out_rows[x, b] > rr)):
                out_vals[x, b + 1] = out_vals[x, b]
                out_rows[x, b + 1] = out_rows[x, b]
                b -= 1
            out_vals[x, b + 1] = rv
            out_rows[x, b + 1] = rr
        for s in range(k, n_out):
            out_rows[x, s] = -1
            out_vals[x, s] = 0.0


@njit(cache=True)
def _rehash(n_ent, erow, ht):  # pragma: no cover - compiled
    """Re-insert every pair's key (entries unchanged) into the empty table ``ht``."""
    mask = np.int64(len(ht) - 1)
    for e in range(0, n_ent, 2):
        key = (np.int64(erow[e]) << 32) | np.int64(erow[e + 1])
        s = _hash(key, mask)
        while ht[s, 0] != _EMPTY:
            s = (s + 1) & mask
        ht[s, 0] = key
        ht[s, 1] = e


@njit(cache=True)
def _compact(keep_row, n_ent, erow, ecol, eval_, enext, head, min_value):  # pragma: no cover - compiled
    """Keep, in order and in place, the pairs whose rows are both kept and |value| >= min_value;
    relink every row list (newest entry first, as learning links them). Returns the entry count."""
    n = 0
    for e in range(0, n_ent, 2):
        if keep_row[erow[e]] and keep_row[erow[e + 1]] and abs(eval_[e]) >= min_value:
            for d in range(2):
                erow[n + d] = erow[e + d]
                ecol[n + d] = ecol[e + d]
                eval_[n + d] = eval_[e + d]
            n += 2
    for r in range(len(head)):
        head[r] = -1
    for e in range(n):
        r = erow[e]
        enext[e] = head[r]
        head[r] = e
    return n


class SequentialKNN:
    """Windowed, recency-weighted item co-occurrence over each user's latest feedback.

    Parameters
    ----------
    window
        Items kept per user (the ring); pairs are only formed inside it.
    decay
        Weight of the ``a``-th newest ring item when scoring: ``decay ** a``.
    pair_decay
        Weight of a pair whose items are ``a`` positions apart: ``pair_decay ** a``.
    alpha, beta
        Normalisation exponents of the source item's and the candidate item's positive weight.
    n_candidates
        Items per user exported (the sparse part of the served score).
    confident
        Feedback events after which a user's neighbourhood scores count fully: exported scores are
        scaled so the strongest is ``min(1, events / confident)``.
    max_pairs
        When the stored pairs exceed this, the weakest are pruned (memory bound).
    top_k
        Neighbours per item walked for candidates: each item's ``top_k`` strongest pairs, kept up to
        date as pairs are reinforced (:func:`_offer`). Walking every pair of a popular item (thousands)
        for each user's candidates was half the trainer's time at 1M users; ml-latest-small's HR@10
        is unchanged with 256 (an item with fewer pairs is walked whole, as before).
    """

    _STATE_VERSION = 2  # 1: every ring position inline (read too)

    def __init__(self, window: int = 20, decay: float = 0.85, pair_decay: float = 0.95, alpha: float = 0.3,
                 beta: float = 0.5, n_candidates: int = 50, max_pairs: int = 20_000_000, confident: int = 5, top_k: int = 256) -> None:
        for name, size in (("window", window), ("n_candidates", n_candidates), ("max_pairs", max_pairs), ("confident", confident),
                           ("top_k", top_k)):
            if int(size) < 1:
                raise ValueError(f"{name}={size!r}: must be >= 1")
        for name, value in (("decay", decay), ("pair_decay", pair_decay)):
            if not 0 < value <= 1:
                raise ValueError(f"{name}={value!r}: must be in (0, 1]")
        for name, value in (("alpha", alpha), ("beta", beta)):
            if not (0 <= value <= 2):
                raise ValueError(f"{name}={value!r}: must be in [0, 2]")
        self.window = int(window)
        self.decay = float(decay)
        self.pair_decay = float(pair_decay)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.n_candidates = int(n_candidates)
        self.max_pairs = int(max_pairs)
        self.confident = int(confident)
        self.top_k = int(top_k)
        self._init_state()

    def get_params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in ("window", "decay", "pair_decay", "alpha", "beta", "n_candidates", "max_pairs", "confident",
                                                       "top_k")}

    def _init_state(self, cap_u: int = 256, cap_i: int = 256, cap_e: int = 1 << 16) -> None:
        short, rest = min(_SHORT, self.window), max(self.window - _SHORT, 0)
        self._ring = Rings(items=np.full((cap_u, short), -1, np.int32), weights=np.zeros((cap_u, short), np.float32),
                           length=np.zeros(cap_u, np.int32), long_row=np.zeros(cap_u, np.int32),
                           long_items=np.full((16, rest), -1, np.int32), long_weights=np.zeros((16, rest), np.float32))
        self._n_long = 1  # long rows given out so far (row 0 is the empty one)
        self._long_free: list[int] = []  # long rows given back (a user forgotten), reused first
        self._cnt = np.zeros(cap_i, np.float32)
        self._head = np.full(cap_i, -1, np.int64)
        self._erow = np.zeros(cap_e, np.int32)
        self._ecol = np.zeros(cap_e, np.int32)
        self._eval = np.zeros(cap_e, np.float32)
        self._enext = np.zeros(cap_e, np.int64)  # written when an entry is created
        self._intop = np.zeros(cap_e, np.uint8)  # 1: the entry is among its row's top_k
        self._top = np.zeros((cap_i, self.top_k), np.int32)  # per item: its strongest entries (entry numbers)
        self._topn = np.zeros(cap_i, np.int32)
        self._topmin = np.zeros(cap_i, np.float32)
        self._topslot = np.zeros(cap_i, np.int32)
        self._new_hash(cap_e)
        self._n_ent = np.zeros(1, np.int64)
        self._acc = np.zeros(cap_i, np.float64)
        self._mark = np.zeros(cap_i, np.int64)
        self._tmp = np.zeros(cap_i, np.float64)

    def _new_hash(self, cap_e: int) -> None:
        """A table of ``cap_e`` slots (one per pair at load <= 1/2; a power of two), refilled."""
        size = 1 << max(16, int(cap_e - 1).bit_length())
        # key and entry side by side: a probe touches one cache line
        self._ht = np.zeros((size, 2), np.int64)
        _rehash(int(self._n_ent[0]) if hasattr(self, "_n_ent") else 0, self._erow, self._ht)

    @property
    def n_pairs(self) -> int:
        """Distinct item pairs stored."""
        return int(self._n_ent[0]) // 2

    # ------------------------------------------------------------------ capacity
    def _ensure(self, n_users: int, n_items: int, new_pairs: int) -> None:
        def grow(arr: np.ndarray, need: int, fill: float) -> np.ndarray:
            if need <= len(arr):
                return arr
            shape = (max(need, 2 * len(arr)),) + arr.shape[1:]
            out = np.zeros(shape, arr.dtype) if fill == 0 else np.full(shape, fill, arr.dtype)
            out[: len(arr)] = arr
            return out

        r = self._ring
        if n_users > len(r.length):
            self._ring = r._replace(items=grow(r.items, n_users, -1), weights=grow(r.weights, n_users, 0),
                                    length=grow(r.length, n_users, 0), long_row=grow(r.long_row, n_users, 0))
        for name, fill in (("_cnt", 0), ("_head", -1), ("_acc", 0), ("_mark", 0), ("_tmp", 0), ("_top", 0), ("_topn", 0), ("_topmin", 0), ("_topslot", 0)):
            setattr(self, name, grow(getattr(self, name), n_items, fill))
        if self.n_pairs + new_pairs > self.max_pairs:
            self.prune(keep=np.ones(len(self._head), np.bool_), target=self.max_pairs // 2)
        need = int(self._n_ent[0]) + 2 * new_pairs
        if need > len(self._ecol):
            cap = max(need, 2 * len(self._ecol))
            for name, fill in (("_erow", 0), ("_ecol", 0), ("_eval", 0), ("_enext", 0), ("_intop", 0)):
                setattr(self, name, grow(getattr(self, name), cap, fill))
        if need > len(self._ht):  # pairs = entries / 2: load factor stays <= 1/2
            self._new_hash(2 * need)

    def prune(self, keep: np.ndarray, target: int | None = None) -> None:
        """Drop every pair touching a row where ``keep`` is False (expired or erased items), and
        with ``target`` the weakest pairs until at most about ``target`` remain."""
        keep = np.asarray(keep, np.bool_)
        if len(keep) < len(self._head):
            keep = np.concatenate([keep, np.ones(len(self._head) - len(keep), np.bool_)])
        min_value = 0.0
        n = self.n_pairs
        if target is not None and n > target:
            vals = np.abs(self._eval[: 2 * n : 2])
            # strictly above the target-th largest: ties (values cluster) cannot keep it over target
            min_value = float(np.nextafter(np.partition(vals, n - target)[n - target], np.inf)) if target > 0 else np.inf
        self._n_ent[0] = _compact(keep, int(self._n_ent[0]), self._erow, self._ecol, self._eval, self._enext, self._head, min_value)
        self._new_hash(len(self._ht))
        self._rebuild_top()
        self._cnt[~keep[: len(self._cnt)]] = 0
        if not keep.all():  # rings must not point at dropped rows (a reused row would inherit them)
            r = self._ring
            for items, weights in ((r.items, r.weights), (r.long_items, r.long_weights)):
                dead = ~keep[np.clip(items, 0, len(keep) - 1)] & (items >= 0)
                items[dead] = -1
                weights[dead] = 0

    def _rebuild_top(self) -> None:
        """Every item's strongest ``top_k`` entries from scratch (entries were renumbered)."""
        _build_top(int(self._n_ent[0]), self._erow, self._eval, self._top, self._topn, self._topmin, self._topslot, self._intop)

    def _give_long_rows(self, users: np.ndarray) -> None:
        """A long-table row for each of ``users`` (which have none): free rows first, then new ones."""
        n = len(users)
        reuse = [self._long_free.pop() for _ in range(min(n, len(self._long_free)))]
        rows = np.array(reuse + list(range(self._n_long, self._n_long + n - len(reuse))), np.int32)
        self._n_long += n - len(reuse)
        r = self._ring
        if self._n_long > len(r.long_items):
            cap = max(self._n_long, 2 * len(r.long_items))
            items = np.full((cap, r.long_items.shape[1]), -1, np.int32)
            weights = np.zeros((cap, r.long_items.shape[1]), np.float32)
            items[: len(r.long_items)], weights[: len(r.long_items)] = r.long_items, r.long_weights
            self._ring = r = r._replace(long_items=items, long_weights=weights)
        r.long_row[users] = rows

    def events_of(self, row: int) -> int:
        """Feedback events the user's ring has taken in."""
        return int(self._ring.length[row]) if row < len(self._ring.length) else 0

    def events_of_rows(self, rows: np.ndarray) -> np.ndarray:
        """:meth:`events_of` for many user rows at once (int64)."""
        rows = np.asarray(rows, np.int64)
        length = self._ring.length
        out = np.zeros(len(rows), np.int64)
        ok = rows < len(length)
        out[ok] = length[rows[ok]]
        return out

    def recent_items(self, row: int) -> np.ndarray:
        """Item rows in the user's ring (newest last)."""
        r = self._ring
        if row >= len(r.length):
            return np.empty(0, np.int64)
        m = int(r.length[row])
        q = np.arange(max(0, m - self.window), m) % self.window
        items = np.concatenate([r.items[row], r.long_items[r.long_row[row]]])[q].astype(np.int64)
        return items[items >= 0]

    def forget_user(self, row: int) -> None:
        """Clear a user's ring (the row is reused by someone else, or the user was erased)."""
        r = self._ring
        if row < len(r.length):
            r.items[row] = -1
            r.weights[row] = 0
            r.length[row] = 0
            lr = int(r.long_row[row])
            if lr:
                r.long_items[lr] = -1
                r.long_weights[lr] = 0
                r.long_row[row] = 0
                self._long_free.append(lr)

    # ------------------------------------------------------------------ learning, scoring
    def learn(self, u_rows: np.ndarray, i_rows: np.ndarray, weights: np.ndarray, *, n_users: int, n_items: int) -> None:
        """Feed events in order: ``weights`` > 0 liked (strength), < 0 disliked, 0 ignored."""
        u_rows = np.ascontiguousarray(u_rows, np.int32)
        weights = np.ascontiguousarray(weights, np.float32)
        n_pos = int(np.count_nonzero(weights > 0))
        self._ensure(n_users, n_items, self.window * n_pos)
        # users whose ring reaches past the inline positions in this batch get their long row now
        users, n_new = np.unique(u_rows[weights != 0], return_counts=True)
        r = self._ring
        grows = (r.length[users] + n_new > r.items.shape[1]) & (r.long_row[users] == 0)
        if r.long_items.shape[1] and grows.any():
            self._give_long_rows(users[grows])
        _learn(u_rows, np.ascontiguousarray(i_rows, np.int32), weights, self._ring, self.window, self._cnt, self._head,
               self._erow, self._ecol, self._eval, self._enext, self._ht, self._n_ent, self.pair_decay,
               self._top, self._topn, self._topmin, self._topslot, self._intop)

    def candidates(self, users: np.ndarray, *, n_items: int, alive: np.ndarray | None = None,
                   gain: np.ndarray | None = None, out: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, values)`` of shape ``[len(users), n_candidates]``: each user's best items by
        neighbourhood score (``-1`` / 0 pads). Items in the user's own ring are excluded.
        ``gain[k]``: the strongest value of a user with ``k + 1`` feedback events (the last entry
        for longer profiles); default ``min(1, events / confident)``. ``out``: int32 and float32
        arrays of at least that shape to write into (returned, cut to ``len(users)`` rows): a
        caller going through many users in chunks reuses one buffer (at 1M users the whole
        answer is 400 MB, and first touching fresh pages cost more CPU than the scoring itself)."""
        if gain is None:
            gain = np.minimum(1.0, np.arange(1, self.confident + 1) / self.confident)
        users = np.ascontiguousarray(users, np.int32)
        self._ensure(int(users.max()) + 1 if len(users) else 0, n_items, 0)
        if alive is None:
            alive = np.ones(len(self._head), np.bool_)
        elif len(alive) < len(self._head):
            alive = np.concatenate([alive, np.zeros(len(self._head) - len(alive), np.bool_)])
        if out is None:
            rows = np.empty((len(users), self.n_candidates), np.int32)
            vals = np.empty((len(users), self.n_candidates), np.float32)
        else:
            rows, vals = out[0][: len(users)], out[1][: len(users)]
            if rows.shape[1:] != (self.n_candidates,) or vals.shape != rows.shape or rows.dtype != np.int32 or vals.dtype != np.float32:
                raise ValueError(f"out: int32 and float32 arrays of shape [>= {len(users)}, {self.n_candidates}] expected")
        _candidates(users, self._ring, self.window, self._cnt, self._top, self._topn, self._ecol, self._eval,
                    alive, self.decay, self.alpha, self.beta, np.asarray(gain, np.float64), self.n_candidates, self._acc, self._mark, self._tmp, rows, vals)
        return rows, vals

    # ------------------------------------------------------------------ state
    def memory_bytes(self, n_users: int | None = None) -> dict[str, float]:
        """Bytes per user (``user``: the inline part plus, with ``n_users``, the long rows in use
        spread over them; ``user_full``: a user whose ring is full) and per item pair."""
        r = self._ring
        inline = r.items[0:1].nbytes + r.weights[0:1].nbytes + r.length[0:1].nbytes + r.long_row[0:1].nbytes
        long_row = r.long_items[0:1].nbytes + r.long_weights[0:1].nbytes
        in_use = (self._n_long - 1 - len(self._long_free)) * long_row
        per_pair = 2 * (4 + 4 + 4 + 8 + 1) + 2 * (8 + 8)  # two entries (row, col, value, next, in-top flag) + hash slots at load <= 1/2
        per_item = self._top[0:1].nbytes + 4 + 4 + 4  # its top_k entry numbers, their count, the weakest's slot and value
        return {"user": float(inline + (in_use / n_users if n_users else 0)), "user_full": float(inline + long_row),
                "pair": float(per_pair), "pairs": float(self.n_pairs), "item": float(per_item)}

    def state(self, n_users: int, n_items: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        n = int(self._n_ent[0])
        r = self._ring
        # long rows renumbered 1.. in user order (the free ones left out); row 0 the empty one
        lrow = r.long_row[:n_users]
        has = np.flatnonzero(lrow)
        new_lrow = np.zeros(n_users, np.int32)
        new_lrow[has] = np.arange(1, len(has) + 1, dtype=np.int32)
        keep = np.concatenate([[0], lrow[has]])
        arrays: dict[str, np.ndarray] = {
            "knn_ring": np.ascontiguousarray(r.items[:n_users]), "knn_ringw": np.ascontiguousarray(r.weights[:n_users]),
            "knn_hlen": np.ascontiguousarray(r.length[:n_users]), "knn_long_row": new_lrow,
            "knn_long": np.ascontiguousarray(r.long_items[keep]), "knn_longw": np.ascontiguousarray(r.long_weights[keep]),
            "knn_cnt": np.ascontiguousarray(self._cnt[:n_items]),
            # entries in order, twins adjacent: the lists and the hash are rebuilt from them on load
            "knn_rows": np.ascontiguousarray(self._erow[:n]), "knn_cols": np.ascontiguousarray(self._ecol[:n]),
            "knn_vals": np.ascontiguousarray(self._eval[:n]),
        }
        return {"state_version": self._STATE_VERSION, "params": self.get_params()}, arrays

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> SequentialKNN:
        """Rebuild from :meth:`state`; also reads state version 1 (every ring position inline:
        ``knn_hist``/``knn_histw`` of ``[users, window]``)."""
        version = meta.get("state_version")
        if version not in (1, cls._STATE_VERSION):
            raise ValueError(f"unsupported co-occurrence state version {version!r}")
        m = cls(**meta["params"])
        nu, ni, n = len(arrays["knn_hlen"]), len(arrays["knn_cnt"]), len(arrays["knn_rows"])
        if n % 2 or (n and int(arrays["knn_rows"].max()) >= ni):
            raise ValueError(f"co-occurrence state: {n} entries over {ni} items is not a list of pairs")
        m._init_state(max(nu, 256), max(ni, 256), max(n, 1 << 16))
        r = m._ring
        short = r.items.shape[1]
        r.length[:nu] = arrays["knn_hlen"]
        if version == 1:
            hist, histw = arrays["knn_hist"], arrays["knn_histw"]
            r.items[:nu], r.weights[:nu] = hist[:, :short], histw[:, :short]
            users = np.flatnonzero(r.length[:nu] > short) if r.long_items.shape[1] else np.zeros(0, np.int64)
            m._give_long_rows(users)
            r = m._ring
            r.long_items[r.long_row[users]], r.long_weights[r.long_row[users]] = hist[users, short:], histw[users, short:]
        else:
            r.items[:nu], r.weights[:nu], r.long_row[:nu] = arrays["knn_ring"], arrays["knn_ringw"], arrays["knn_long_row"]
            rest = r.long_items.shape[1]
            n_long = len(arrays["knn_long"])
            m._ring = r._replace(long_items=np.array(arrays["knn_long"], np.int32).reshape(n_long, rest),
                                 long_weights=np.array(arrays["knn_longw"], np.float32).reshape(n_long, rest))
            m._n_long = len(m._ring.long_items)
        m._cnt[:ni] = arrays["knn_cnt"]
        m._erow[:n], m._ecol[:n], m._eval[:n] = arrays["knn_rows"], arrays["knn_cols"], arrays["knn_vals"]
        m._n_ent[0] = _compact(np.ones(len(m._head), np.bool_), n, m._erow, m._ecol, m._eval, m._enext, m._head, 0.0)
        m._new_hash(2 * n)
        m._rebuild_top()
        return m
