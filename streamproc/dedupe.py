"""De-duplication of events by ``event_id`` over a bounded window.

Upstream delivery is at-least-once (publisher retries, replays), so the same event can arrive
twice; training on it twice would double its weight. The window remembers the last ``window``
distinct ids (FIFO eviction): memory stays bounded and a duplicate arriving within ``window``
distinct events of its original is dropped.
"""

from __future__ import annotations

from collections import deque

__all__ = ["Deduper"]


class Deduper:
    """Remembers the last ``window`` distinct event ids; ``seen(id)`` says whether one repeats.

    Parameters
    ----------
    window
        How many distinct ids are remembered; 0 disables de-duplication.

    Examples
    --------
    >>> d = Deduper(window=2)
    >>> [d.seen(x) for x in ["a", "b", "a", "c", "a"]]
    [False, False, True, False, False]
    >>> len(d)
    2
    """

    def __init__(self, window: int) -> None:
        if window < 0:
            raise ValueError(f"window: {window} must be >= 0")
        self.window = window
        self._ids: set[str] = set()
        self._order: deque[str] = deque()

    def seen(self, event_id: str) -> bool:
        """True when ``event_id`` is in the window (a duplicate); otherwise remember it."""
        if not self.window:
            return False
        ids = self._ids
        if event_id in ids:
            return True
        ids.add(event_id)
        order = self._order
        order.append(event_id)
        if len(order) > self.window:
            ids.discard(order.popleft())
        return False

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids
