"""The swappable model holder: applies model updates in order and swaps one reference.

Requests read :attr:`ModelStore.current` once and use that object to the end, so every request
sees exactly one version; building the next version happens on whichever thread calls
:meth:`ModelStore.apply` (the update consumer thread in ``reco serve``), never on the event loop.

Rules: versions only move forward; a delta whose ``base_version`` is not the served version is
a *gap*; an update that does not decode is *corrupt*. Both are logged, counted in
``reco_serving_updates_rejected_total{reason}`` and healed by a complete snapshot (the follower,
:class:`serving.kafka_io.UpdateFollower`, reloads one from the model-snapshots topic after a
gap); until then the last good version keeps serving.

Examples
--------
>>> import numpy as np
>>> from prometheus_client import CollectorRegistry
>>> from trainer.updates import ModelUpdate
>>> store = ModelStore(metrics=ServingMetrics(CollectorRegistry()))
>>> snap = ModelUpdate({"version": 1, "kind": "snapshot", "user_ids": ["u"], "item_ids": ["a"]},
...                    {"user_factors": np.ones((1, 2), np.float32), "item_factors": np.ones((1, 2), np.float32)})
>>> store.apply(snap.encode()).swapped, store.current.version
(True, 1)
>>> store.apply(b"garbage").reason, store.current.version
('corrupt', 1)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from serving.metrics import ServingMetrics
from serving.model import RejectedUpdate, ServingModel
from serving.settings import ServingSettings
from streamproc.errors import InvalidUpdate
from trainer.updates import ModelUpdate

__all__ = ["ModelStore", "ApplyResult"]

log = logging.getLogger(__name__)

Listener = Callable[[ServingModel, ModelUpdate], None]


@dataclass(frozen=True)
class ApplyResult:
    """What :meth:`ModelStore.apply` did: ``swapped`` (a new version is served), ``pending`` (a
    snapshot chunk was kept until its siblings arrive), ``skipped`` (already served), or a
    rejection ``reason`` (corrupt | gap | stale | no_base | shape)."""

    swapped: bool = False
    version: int | None = None
    reason: str | None = None
    pending: bool = False
    skipped: bool = False


class ModelStore:
    """Holds the served :class:`~serving.model.ServingModel` and applies updates to it.

    Parameters
    ----------
    settings
        Uses ``seen_per_user``.
    metrics
        Where swaps, rejections and feedback latency are counted.
    clock
        Wall clock (Unix s) for feedback latency.
    """

    def __init__(self, settings: ServingSettings | None = None, metrics: ServingMetrics | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings or ServingSettings()
        self.metrics = metrics or ServingMetrics()
        self.clock = clock
        self._current: ServingModel | None = None
        self._pending: dict[int, dict[int, ModelUpdate]] = {}
        self._lock = threading.Lock()
        self.listeners: list[Listener] = []
        self.swaps = 0
        self.rejected: dict[str, int] = {}

    @property
    def current(self) -> ServingModel | None:
        """The model being served (None before the first snapshot)."""
        return self._current

    @property
    def version(self) -> int | None:
        m = self._current
        return None if m is None else m.version

    # ------------------------------------------------------------------ applying
    def apply(self, data: bytes, *, observe_latency: bool = True) -> ApplyResult:
        """Decode and apply one message of the model-updates topic."""
        t0 = time.perf_counter()
        try:
            update = ModelUpdate.decode(data)
        except InvalidUpdate as exc:
            return self._reject("corrupt", str(exc))
        return self.apply_update(update, observe_latency=observe_latency, t0=t0)

    def apply_update(self, update: ModelUpdate, *, observe_latency: bool = True, t0: float | None = None) -> ApplyResult:
        """Apply an already decoded update (see :meth:`apply`)."""
        t0 = time.perf_counter() if t0 is None else t0
        with self._lock:
            h = update.header
            version, kind = h.version, h.kind
            cur = self.version
            if kind == "snapshot":
                if cur is not None and version < cur:
                    return self._reject("stale", f"snapshot {version} is older than the served version {cur}")
                if cur is not None and version == cur:
                    return ApplyResult(version=version, skipped=True)
                for old in [v for v in self._pending if v < version]:
                    del self._pending[old]  # superseded before it completed
                parts = self._pending.setdefault(version, {})
                parts[h.chunk] = update
                if len(parts) < h.chunks:
                    return ApplyResult(version=version, pending=True)
                updates = [parts[i] for i in range(h.chunks)]
                del self._pending[version]
            else:
                if cur is not None and version <= cur:
                    return self._reject("stale", f"delta {version} is not newer than the served version {cur}")
                updates = [update]
            try:
                model = ServingModel.build(self._current, updates, seen_per_user=self.settings.seen_per_user,
                                           ann_min_items=self.settings.ann_min_items, ann_fetch=self.settings.ann_fetch)
            except RejectedUpdate as exc:
                return self._reject(exc.reason, str(exc))
            except (KeyError, TypeError, ValueError, IndexError) as exc:  # well-formed file, nonsense content
                return self._reject("corrupt", f"{kind} {version}: {exc!r}")
            self._current = model  # the swap: one reference, atomically replaced
            self.swaps += 1
        m = self.metrics
        m.swaps.inc()
        m.model_version.set(version)
        m.swap_duration.observe(time.perf_counter() - t0)
        if observe_latency:
            now = self.clock()
            for u in updates:
                for _, _, published in u.header.published:
                    m.feedback_latency.observe(max(0.0, now - published))
        for listener in list(self.listeners):
            for u in updates:
                try:
                    listener(model, u)
                except Exception:  # noqa: BLE001 - a listener must never break the swap path
                    log.exception("model listener failed")
        return ApplyResult(swapped=True, version=version)

    def _reject(self, reason: str, message: str) -> ApplyResult:
        self.metrics.updates_rejected.labels(reason).inc()
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        log.warning("model update rejected (%s): %s; serving version %s", reason, message, self.version)
        return ApplyResult(reason=reason, version=self.version)

    # ------------------------------------------------------------------ catching up
    def catch_up(self, messages: Iterable[bytes]) -> int:
        """Start-up: read the topic from the beginning, keep the last complete snapshot and the
        updates after it, then apply those. Returns the number of swaps.

        Feedback latency is not observed for history (it would measure the replica's start, not
        the loop).
        """
        tail: list[ModelUpdate] = []
        chunks_seen: dict[int, set[int]] = {}
        first_pos: dict[int, int] = {}
        for data in messages:
            try:
                u = ModelUpdate.decode(data)
            except InvalidUpdate as exc:
                self._reject("corrupt", str(exc))
                continue
            tail.append(u)
            h = u.header
            if not h.is_snapshot:
                continue
            v = h.version
            first_pos.setdefault(v, len(tail) - 1)
            got = chunks_seen.setdefault(v, set())
            got.add(h.chunk)
            if len(got) >= h.chunks:  # complete: everything before its first chunk is history
                start = first_pos[v]
                tail = tail[start:]
                first_pos = {k: p - start for k, p in first_pos.items() if p >= start}
                chunks_seen = {k: s for k, s in chunks_seen.items() if k in first_pos}
        before = self.swaps
        for u in tail:
            self.apply_update(u, observe_latency=False)
        return self.swaps - before
