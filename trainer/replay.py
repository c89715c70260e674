"""A bounded replay buffer of past training examples (rows, not ids), mixed into fresh batches.

Policies
--------
``reservoir``  uniform sample of the whole stream so far (Vitter's algorithm R), sampled uniformly.
``recency``    ring buffer of the most recent ``size`` examples, sampled uniformly (a sliding window).
``per_user``   reservoir storage, sampled so that every user present gets the same replay share
               (probability ∝ 1 / examples of that user in the buffer): heavy raters do not dominate.

After a drift, :meth:`ReplayBuffer.favour_recent` restricts sampling to examples added since then
for a while, so stale pre-drift examples are not replayed into the new regime.

Examples
--------
>>> import numpy as np
>>> buf = ReplayBuffer(size=3, policy="recency", seed=1)
>>> buf.add_many(users=[0, 1, 2, 3], items=[5, 6, 7, 8], kinds=[0, 0, 0, 0],
...              targets=[4.0, 3.0, 2.0, 1.0], weights=[1.0] * 4, times=[1.0, 2.0, 3.0, 4.0])
>>> len(buf), sorted(buf.entries["user"].tolist())
(3, [1, 2, 3])
>>> buf.sample(2)["user"].shape
(2,)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["ReplayBuffer", "REPLAY_DTYPE", "POLICIES"]

POLICIES = ("reservoir", "recency", "per_user")
REPLAY_DTYPE = np.dtype(
    [("user", "<i4"), ("item", "<i4"), ("kind", "u1"), ("target", "<f4"), ("weight", "<f4"), ("time", "<f8"), ("seq", "<i8")]
)
_FIELDS: tuple[str, ...] = REPLAY_DTYPE.names or ()


class ReplayBuffer:
    """Bounded store of past examples with a sampling policy.

    Parameters
    ----------
    size
        Capacity in examples (0 disables the buffer).
    policy
        ``reservoir``, ``recency`` or ``per_user`` (see the module docstring).
    seed
        Seed of the buffer's own random generator (insertion and sampling).
    """

    def __init__(self, size: int = 50_000, policy: str = "reservoir", seed: int = 42) -> None:
        if size < 0:
            raise ValueError(f"size={size!r}: must be >= 0")
        if policy not in POLICIES:
            raise ValueError(f"policy={policy!r}: must be one of {', '.join(POLICIES)}")
        self.size = size
        self.policy = policy
        self.seed = seed
        self._data = np.zeros(size, REPLAY_DTYPE)
        self._len = 0
        self._seen = 0  # examples offered so far (also the next sequence number)
        self._recent_since = -1  # while >= 0, sample only examples with seq >= this
        self._recent_until = -1  # ... until this many examples were offered
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self._len

    @property
    def entries(self) -> np.ndarray:
        """The stored examples (a view, ``REPLAY_DTYPE``)."""
        return self._data[: self._len]

    # ------------------------------------------------------------------ writing
    def add_many(
        self,
        *,
        users: Sequence[int] | np.ndarray,
        items: Sequence[int] | np.ndarray,
        kinds: Sequence[int] | np.ndarray,
        targets: Sequence[float] | np.ndarray,
        weights: Sequence[float] | np.ndarray,
        times: Sequence[float] | np.ndarray,
    ) -> None:
        """Offer examples, in stream order; the policy decides which are kept."""
        m = len(users)
        if m == 0 or self.size == 0:
            self._seen += m
            return
        new = np.empty(m, REPLAY_DTYPE)
        new["user"], new["item"], new["kind"] = users, items, kinds
        new["target"], new["weight"], new["time"] = targets, weights, times
        new["seq"] = np.arange(self._seen, self._seen + m)
        total = m
        if self.policy == "recency":
            # compact, in sequence order: drop the oldest to make room (one memmove per batch)
            if m >= self.size:
                new, m = new[-self.size :], self.size
            over = self._len + m - self.size
            if over > 0:
                keep = self._len - over
                self._data[:keep] = self._data[over : self._len]
                self._len = keep
            self._data[self._len : self._len + m] = new
            self._len += m
        else:
            # Algorithm R, vectorised: example number s (0-based) is kept with probability
            # size / (s + 1), replacing a uniformly chosen slot; while filling, it is appended.
            fill = min(m, self.size - self._len)
            if fill:
                self._data[self._len : self._len + fill] = new[:fill]
                self._len += fill
            rest = new[fill:]
            if len(rest):
                j = (self._rng.random(len(rest)) * (rest["seq"] + 1)).astype(np.int64)
                keep_mask = j < self.size
                # duplicates in j: the later example wins, as in the sequential algorithm
                self._data[j[keep_mask]] = rest[keep_mask]
        self._seen += total

    def drop_rows(self, *, users: np.ndarray | None = None, items: np.ndarray | None = None) -> int:
        """Forget examples of expired user/item rows (rows get reused); returns how many."""
        if self._len == 0:
            return 0
        data = self._data[: self._len]
        bad = np.zeros(self._len, bool)
        if users is not None and len(users):
            bad |= np.isin(data["user"], users)
        if items is not None and len(items):
            bad |= np.isin(data["item"], items)
        n = int(bad.sum())
        if n:
            kept = data[~bad].copy()
            self._len = len(kept)
            self._data[: self._len] = kept
        return n

    def favour_recent(self, events: int) -> None:
        """Sample only examples added from now on, for the next ``events`` offered examples."""
        self._recent_since = self._seen
        self._recent_until = self._seen + max(0, int(events))

    # ------------------------------------------------------------------ reading
    def sample(self, n: int) -> np.ndarray:
        """Up to ``n`` stored examples drawn with replacement under the policy (``REPLAY_DTYPE``)."""
        if n <= 0 or self._len == 0:
            return self._data[:0]
        data = self._data[: self._len]
        if self._recent_since >= 0:
            if self._seen >= self._recent_until:
                self._recent_since = self._recent_until = -1
            else:
                idx = np.flatnonzero(data["seq"] >= self._recent_since)
                if len(idx) == 0:
                    return self._data[:0]
                return data[idx[self._rng.integers(0, len(idx), n)]]
        if self.policy == "per_user":
            users = data["user"]
            counts = np.bincount(users)
            p = 1.0 / counts[users]
            c = np.cumsum(p)
            pick = np.searchsorted(c, self._rng.random(n) * c[-1], side="right")
            return data[np.minimum(pick, self._len - 1)]
        return data[self._rng.integers(0, self._len, n)]

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON-able meta and arrays (no pickle): everything needed to resume identically."""
        meta = {
            "size": self.size, "policy": self.policy, "seed": self.seed, "len": self._len, "seen": self._seen,
            "recent_since": self._recent_since, "recent_until": self._recent_until,
            "rng": self._rng.bit_generator.state,
        }
        data = self._data[: self._len]
        arrays = {f"replay_{name}": np.ascontiguousarray(data[name]) for name in _FIELDS}
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> ReplayBuffer:
        buf = cls(size=meta["size"], policy=meta["policy"], seed=meta["seed"])
        n = len(arrays["replay_user"])
        for name in _FIELDS:
            buf._data[name][:n] = arrays[f"replay_{name}"]
        buf._len, buf._seen = int(meta["len"]), int(meta["seen"])
        buf._recent_since, buf._recent_until = int(meta["recent_since"]), int(meta["recent_until"])
        buf._rng.bit_generator.state = meta["rng"]
        return buf
