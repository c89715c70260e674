"""The shapes the trainer's parts speak: a stateful component, an online model, a monitor.

Structural types (:class:`typing.Protocol`): a class conforms by having the methods, no base class
needed. They are ``runtime_checkable``, so ``isinstance(obj, Stateful)`` checks that the methods
exist (not their signatures; mypy checks those). ``tests/trainer/test_contracts.py`` runs every
component through the same behavioural checks (river's ``check_estimator`` pattern).

State
-----
Every stateful component saves as ``(meta, arrays)``: ``meta`` is a JSON-able dict (parameters,
counters, small lists), ``arrays`` maps names to numpy arrays (stored with safetensors by
:mod:`trainer.checkpoint`, never pickled). ``type(obj).from_state(meta, arrays)`` rebuilds an
object that continues exactly as the original would have.

Examples
--------
>>> from trainer.drift import DriftMonitor
>>> from trainer.model import HybridMF
>>> from trainer.prequential import Prequential
>>> from trainer.replay import ReplayBuffer
>>> all(isinstance(c, Stateful) for c in (HybridMF(), ReplayBuffer(), Prequential(), DriftMonitor()))
True
>>> isinstance(HybridMF(), OnlineModel), isinstance(Prequential(), Monitor), isinstance(DriftMonitor(), Monitor)
(True, True, True)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from streamproc.examples import ExampleBatch
    from trainer.settings import TrainerSettings

__all__ = ["Meta", "Arrays", "State", "Stateful", "OnlineModel", "Monitor"]

Meta = dict[str, Any]
"""JSON-able part of a state: parameters, counters, short lists."""
Arrays = dict[str, np.ndarray]
"""Numeric part of a state: named numpy arrays (safetensors)."""
State = tuple[Meta, Arrays]


@runtime_checkable
class Stateful(Protocol):
    """Saves to and rebuilds from one ``(meta, arrays)`` state (checkpoints)."""

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON-able meta and numpy arrays: everything needed to continue identically."""
        ...

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Self:
        """Rebuild from :meth:`state` output (after JSON and safetensors round trips)."""
        ...


@runtime_checkable
class OnlineModel(Stateful, Protocol):
    """A model the trainer learns batch by batch and publishes (``trainer.model.HybridMF``).

    Constructor arguments are public attributes (:meth:`get_params`); randomness comes only from a
    ``seed`` argument, so two models with the same parameters learn the same stream identically.
    """

    @classmethod
    def from_settings(cls, settings: TrainerSettings) -> Self:
        """Build from the trainer's settings."""
        ...

    def get_params(self) -> dict[str, Any]:
        """Constructor arguments (JSON-able): ``type(m)(**m.get_params())`` is a fresh copy."""
        ...

    def clone(self) -> Self:
        """A fresh, unfitted model with the same parameters."""
        ...

    def learn_batch(self, batch: ExampleBatch) -> np.ndarray:
        """Test then train: one prediction per example (made before learning it), then learn."""
        ...

    def predict_one(self, user_id: str, item_id: str) -> float:
        """Prediction for one user and item (unknown ids allowed)."""
        ...

    def export(self, full: bool, *, candidates: bool = True) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Header part and tensors of a model update: every row (``full``) or the changed ones.
        ``candidates=False`` may defer a full export's candidate tensors to ``header["candidates"]``
        (a function of a slice of the exported users; see ``HybridMF.export``)."""
        ...

    def on_drift(self) -> None:
        """React to a drift the monitor reported."""
        ...


@runtime_checkable
class Monitor(Protocol):
    """Watches the prequential stream: ``update_batch`` with ``learn_batch``'s predictions, ``get``."""

    def update_batch(self, batch: ExampleBatch, predictions: np.ndarray) -> Any:
        """Fold in one batch and the predictions made for it before learning it."""
        ...

    def get(self) -> dict[str, Any]:
        """The current values (JSON-able)."""
        ...
