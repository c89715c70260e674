"""Drift detection on the prequential stream with river detectors (ADWIN default, Page-Hinkley).

Three signals, one detector each:

``error``      absolute prequential error of rated examples; only *increases* are reported (the model
               getting better as it learns is not a drift).
``rating``     the rating level (targets of ratings and rated comments), both directions.
``sentiment``  the comment sentiment level: the rating of rated comments, and the sentiment head's
               estimate (the prediction) for unrated ones, both directions.

A detection is ``{"signal", "index", "evidence"}`` where ``index`` counts the examples this monitor
has seen (0-based, the example that triggered it) and ``evidence`` holds the detector, the value, and
the signal's mean before/after (ADWIN: estimation and window width). Values are averaged in blocks
of ``block`` before they reach the detector, so an index is the example that completed a block.

Checkpoints: river's ADWIN keeps its buckets in a Rust object that has no public, JSON-able state,
so :meth:`DriftMonitor.state` stores the last ``history`` values of each signal (and the partial
block) and
:meth:`DriftMonitor.from_state` rebuilds the detectors by feeding them those values again (detections
during the rebuild are discarded). The rebuilt detector sees the same recent window, not the exact
same buckets.

Examples
--------
>>> import numpy as np
>>> from streamproc.examples import ExampleBatch, KIND_RATING
>>> rng = np.random.default_rng(0)
>>> y = np.r_[rng.normal(4, 0.3, 2000), rng.normal(2, 0.3, 2000)].clip(0.5, 5)
>>> b = ExampleBatch.build(event_ids=[""] * 4000, user_ids=["u"] * 4000, item_ids=["i"] * 4000,
...     kinds=[KIND_RATING] * 4000, targets=y, event_times=[0.0] * 4000, published=[0.0] * 4000,
...     processed=[0.0] * 4000)
>>> found = DriftMonitor().update_batch(b, np.full(4000, 3.5))
>>> sorted({d["signal"] for d in found}), all(2000 <= d["index"] < 4000 for d in found)
(['error', 'rating'], True)
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from streamproc.examples import KIND_COMMENT, KIND_RATING, ExampleBatch

__all__ = ["DriftMonitor", "SIGNALS", "DETECTORS"]

SIGNALS = ("error", "rating", "sentiment")
_RECENT_BLOCKS = 4  # blocks that stand for "the level now" when a level shift is measured
DETECTORS = ("adwin", "page_hinkley")


class DriftMonitor:
    """Watch prequential error, rating level and sentiment level for abrupt changes.

    Parameters
    ----------
    detector
        ``adwin`` (river ``drift.ADWIN``) or ``page_hinkley`` (river ``drift.PageHinkley``).
    delta
        ADWIN confidence (smaller = fewer false alarms, slower); Page-Hinkley's ``delta`` if set.
    threshold
        Page-Hinkley threshold (ignored by ADWIN).
    block
        The detectors see the mean of each ``block`` consecutive values of a signal: single
        prequential errors are heavy-tailed and users rate in bursts, so per-event ADWIN raised
        ~20 false alarms on ml-latest-small's stationary half; block means of 50 raised none and
        still caught an abrupt flip within ~2.3k events (``reco bench trainer``).
    history
        Values per signal kept to rebuild the detectors from a checkpoint.
    min_shift
        Level signals (``rating``, ``sentiment``): a detection is reported only when the level
        moved by at least this much (rating units): the mean of the newest 4 blocks against the rest
        of the window the detector held.
        ADWIN is right that ml-latest-small's rating level wanders by 0.03-0.06 stars over the
        years — 4-5 detections per 100k events — but nobody should be paged or have the model
        reset for that; an abrupt flip of half the items moves the level ~0.7 stars.
    confirm_blocks
        Level signals: a shift is reported only if the mean of the next ``confirm_blocks`` blocks
        still differs from the old level by ``min_shift`` in the same direction (at the block that
        confirms it). On ml-latest-small every remaining detection was one user rating a few hundred
        films low in one sitting (shifts of 1-1.4 stars over 200-500 events) that reverted.
    seed
        Accepted for the common interface; the river detectors used are deterministic.
    """

    def __init__(self, detector: str = "adwin", delta: float | None = None, threshold: float = 20.0,
                 block: int = 50, history: int = 5000, seed: int = 42, min_shift: float = 0.25, confirm_blocks: int = 20) -> None:
        if detector not in DETECTORS:
            raise ValueError(f"detector={detector!r}: must be one of {', '.join(DETECTORS)}")
        if delta is not None and not 0 < delta < 1:
            raise ValueError(f"delta={delta!r}: must be in (0, 1)")
        if block < 1:
            raise ValueError(f"block={block!r}: must be >= 1")
        if history < 0:
            raise ValueError(f"history={history!r}: must be >= 0")
        if not min_shift >= 0:
            raise ValueError(f"min_shift={min_shift!r}: must be >= 0")
        if confirm_blocks < 0:
            raise ValueError(f"confirm_blocks={confirm_blocks!r}: must be >= 0")
        self.detector = detector
        self.delta = delta
        self.threshold = threshold
        self.block = block
        self.history = history
        self.seed = seed
        self.min_shift = float(min_shift)
        self.confirm_blocks = int(confirm_blocks)
        self._pending: dict[str, dict[str, Any]] = {}
        self._acc = {s: [0.0, 0] for s in SIGNALS}  # current block: sum, count
        self._det = {s: self._make() for s in SIGNALS}
        self._hist: dict[str, deque[float]] = {s: deque(maxlen=history) for s in SIGNALS}
        self._mean = {s: [0.0, 0] for s in SIGNALS}  # running mean of each signal since its last drift
        self._blocks: dict[str, deque[float]] = {s: deque(maxlen=2000) for s in SIGNALS}  # recent block means
        self._index = 0
        self.detections = dict.fromkeys(SIGNALS, 0)

    def _make(self) -> Any:
        from river import drift

        if self.detector == "adwin":
            # block means arrive slowly: check for a cut at every value (clock=1), not every 32nd
            return drift.ADWIN(delta=self.delta if self.delta is not None else 0.002, clock=1)
        return drift.PageHinkley(threshold=self.threshold, delta=self.delta if self.delta is not None else 0.005,
                                 min_instances=10)

    def update_batch(self, batch: ExampleBatch, predictions: np.ndarray) -> list[dict[str, Any]]:
        """Feed one batch (and ``learn_batch``'s predictions); returns the detections in it."""
        rec = batch.records
        kinds, targets = rec["kind"], rec["target"].astype(np.float64)
        predictions = np.asarray(predictions, np.float64)
        rated = ((kinds == KIND_RATING) | (kinds == KIND_COMMENT)) & ~np.isnan(targets)
        comment = kinds == KIND_COMMENT
        err = np.abs(predictions - targets)
        sentiment = np.where(np.isnan(targets), predictions, targets)
        found: list[dict[str, Any]] = []
        base = self._index
        for n in np.flatnonzero(rated | comment).tolist():
            if rated[n]:
                self._feed("error", float(err[n]), base + n, found)
                self._feed("rating", float(targets[n]), base + n, found)
            if comment[n] and not np.isnan(sentiment[n]):
                self._feed("sentiment", float(sentiment[n]), base + n, found)
        self._index += len(kinds)
        return found

    def _feed(self, signal: str, value: float, index: int, found: list[dict[str, Any]] | None) -> None:
        self._hist[signal].append(value)
        blk = self._acc[signal]
        blk[0] += value
        blk[1] += 1
        if blk[1] < self.block:
            return
        value = blk[0] / blk[1]
        blk[0], blk[1] = 0.0, 0
        det = self._det[signal]
        acc = self._mean[signal]
        before = acc[0] / acc[1] if acc[1] else None
        est_before = getattr(det, "estimation", None)
        w_before = int(getattr(det, "width", 0))
        n_before = int(acc[1])
        self._blocks[signal].append(value)
        pend = self._pending.get(signal)
        if pend is not None:
            pend["blocks"].append(value)
            if len(pend["blocks"]) >= self.confirm_blocks:
                del self._pending[signal]
                shift = float(np.mean(pend["blocks"])) - pend["level"]
                if shift * pend["sign"] >= self.min_shift and found is not None:
                    self.detections[signal] += 1
                    found.append({"signal": signal, "index": index,
                                  "evidence": {**pend["evidence"], "confirmed_shift": shift, "first_seen_index": pend["index"]}})
        det.update(value)
        acc[0] += value
        acc[1] += 1
        if not det.drift_detected:
            return
        if self.detector == "adwin":
            after = float(det.estimation)
            evidence = {"detector": "adwin", "value": value, "mean_before": est_before, "mean_after": after,
                        "width": float(det.width)}
        else:
            after = value
            evidence = {"detector": "page_hinkley", "value": value, "mean_before": before}
        self._mean[signal] = [0.0, 0]
        if signal == "error" and est_before is not None and after <= est_before:
            return  # the error went down: learning, not drift
        if signal == "error" and self.detector == "page_hinkley" and before is not None and value <= before:
            return
        if signal != "error":
            # the shift: the newest blocks against the rest of the window the detector held
            blocks = list(self._blocks[signal])
            span = (w_before if self.detector == "adwin" else n_before) + 1
            recent, prior = blocks[-_RECENT_BLOCKS:], blocks[-span:-_RECENT_BLOCKS]
            shift = float(np.mean(recent) - np.mean(prior)) if prior else 0.0
            evidence["shift"] = shift
            if abs(shift) < self.min_shift:
                return  # the level wandered a little: real, but not worth a reaction
            if self.confirm_blocks:
                # reported only if the new level holds: one user's burst of low ratings is not drift
                self._pending[signal] = {"index": index, "level": float(np.mean(prior)), "sign": 1.0 if shift > 0 else -1.0,
                                         "blocks": [], "evidence": evidence}
                return
        if found is not None:
            self.detections[signal] += 1
            found.append({"signal": signal, "index": index, "evidence": evidence})

    # ------------------------------------------------------------------ checkpoints
    def get(self) -> dict[str, Any]:
        """Detections so far per signal and the number of examples seen."""
        return {"detections": dict(self.detections), "index": self._index}

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON-able meta (parameters, counters, pending shifts) and arrays: the recent values of
        each signal (``values_<signal>``)."""
        meta = {"detector": self.detector, "delta": self.delta, "threshold": self.threshold, "block": self.block,
                "history": self.history, "min_shift": self.min_shift, "confirm_blocks": self.confirm_blocks,
                "seed": self.seed, "index": self._index, "detections": dict(self.detections),
                "signals": list(self._hist), "pending": self._pending}
        return meta, {f"values_{s}": np.array(h, np.float64) for s, h in self._hist.items()}

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> DriftMonitor:
        """Rebuild (see the module docstring): detectors re-fed with the stored recent values.

        Also takes the single dict older checkpoints hold (``from_state(d)``, values in ``d["values"]``)."""
        s = meta
        m = cls(s["detector"], s["delta"], s["threshold"], s["block"], s["history"], s["seed"], s.get("min_shift", 0.25),
                s.get("confirm_blocks", 20))
        if "values" in s:  # the dict state of older checkpoints
            values_of = {signal: [float(v) for v in values] for signal, values in s["values"].items()}
        else:
            values_of = {signal: np.asarray((arrays or {})[f"values_{signal}"], np.float64).tolist() for signal in s["signals"]}
        for signal, values in values_of.items():
            for v in values:
                m._feed(signal, v, 0, None)
        m._pending = {k: dict(v) for k, v in (s.get("pending") or {}).items()}  # not the ones the re-feed raised
        m._index = int(s["index"])
        m.detections = {k: int(v) for k, v in s["detections"].items()}
        return m
