"""gain_ranks: the young-profile gain learning's ranks, exact without scoring the catalogue per pair."""

from __future__ import annotations

import numpy as np

from trainer.model import KNN_GAINS, MF_GAINS, gain_ranks


def naive(pop, mf, rows, vals, i, top=10):
    """Every (knn gain, mf gain) pair scores the whole catalogue (the definition)."""
    gk = np.repeat(np.array(KNN_GAINS), len(MF_GAINS))[:, None]
    gm = np.tile(np.array(MF_GAINS), len(KNN_GAINS))[:, None]
    s = pop[None, :] + gm * mf[None, :]
    s[:, rows] += gk * vals[None, :]
    st = s[:, i : i + 1]
    r = np.count_nonzero(s > st, axis=1) + 0.5 * (np.count_nonzero(s == st, axis=1) - 1)
    return np.where(r < top, r, np.inf)


def test_gain_ranks_equal_scoring_every_pair_including_ties_dead_items_and_repeated_rows() -> None:
    rng = np.random.default_rng(0)
    checked = found = 0
    for case in range(3000):
        n = int(rng.choice([1, 3, 9, 10, 11, 40, 300]))
        levels = int(rng.integers(1, 6))  # few distinct values: many ties
        pop = rng.integers(0, levels, n).astype(np.float64) * 0.5
        mf = rng.integers(-2, 3, n).astype(np.float64) * 0.25 if case % 3 else np.zeros(n)
        pop[rng.random(n) < 0.2] = -np.inf  # dead or recent items
        m = int(rng.integers(0, min(n, 12) + 1))
        rows = rng.integers(0, n, m) if case % 5 == 0 else rng.choice(n, m, replace=False)  # sometimes repeated
        vals = rng.integers(0, 4, m).astype(np.float64) * 0.5
        i = int(rows[0]) if m and case % 2 else int(rng.integers(0, n))
        if pop[i] == -np.inf and case % 7:
            pop[i] = 0.5
        got, want = gain_ranks(pop, mf, rows, vals, i), naive(pop, mf, rows, vals, i)
        np.testing.assert_array_equal(got, want, err_msg=f"case {case}")
        checked += 1
        found += int(np.isfinite(want).any())
    assert checked == 3000 and 300 < found < checked  # both outcomes are exercised


def test_gain_ranks_on_a_large_catalogue_match() -> None:
    rng = np.random.default_rng(1)
    n = 50_000
    pop, mf = rng.normal(size=n), rng.normal(size=n)
    rows = rng.choice(n, 200, replace=False)
    vals = rng.random(200) * 3
    for i in [int(rows[0]), int(rows[5]), int(np.argmax(pop)), 7]:
        np.testing.assert_array_equal(gain_ranks(pop, mf, rows, vals, i), naive(pop, mf, rows, vals, i))
