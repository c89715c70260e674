"""De-duplication window: repeats inside the window are caught, memory stays bounded."""

from __future__ import annotations

import pytest

from streamproc.dedupe import Deduper


def test_duplicates_inside_the_window_are_reported() -> None:
    d = Deduper(window=100)
    assert [d.seen(x) for x in ["a", "b", "a", "b", "c"]] == [False, False, True, True, False]


def test_window_is_bounded_and_evicts_oldest_first() -> None:
    d = Deduper(window=3)
    for x in ["a", "b", "c", "d"]:
        assert not d.seen(x)
    assert len(d) == 3
    assert "a" not in d and "d" in d
    assert not d.seen("a")  # forgotten: counted as new again
    assert d.seen("d")


def test_memory_stays_bounded_over_many_ids() -> None:
    d = Deduper(window=1000)
    for n in range(50_000):
        d.seen(f"e{n}")
    assert len(d) == 1000
    assert d.seen("e49999") and not d.seen("e0")


def test_zero_window_disables_and_negative_is_rejected() -> None:
    d = Deduper(window=0)
    assert not d.seen("a") and not d.seen("a")
    with pytest.raises(ValueError, match="window"):
        Deduper(window=-1)
