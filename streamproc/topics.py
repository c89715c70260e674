"""The topic plan: every topic the service uses, its partitions and its key.

================  ==============================  ==========  ============================
topic             written by → read by            partitions  key
================  ==============================  ==========  ============================
events            apps, ``POST /v1/events``       P           user_id
                  → streamproc (consumer group)
events.dlq        streamproc → operators          1           original key; headers carry
                                                              reason + source position
examples          streamproc → trainer            1           none (batches); one partition
                                                              = one active trainer, global order
model-updates     trainer → every serving replica 1           none; versions in order
rec-requests      services → serving (group)      P           user_id
items             apps, ``POST /v1/items``        P           item_id; **compacted**
                  → streamproc (group), every                 (``cleanup.policy=compact``):
                  serving replica (from the start)            the newest record per item
recommendations   serving → services              P           user_id
control           ``DELETE /v1/users|items/{id}`` 1           the erased id; erasure
                  → trainer                                   requests (:mod:`streamproc.control`)
================  ==============================  ==========  ============================

``P`` is ``RECO_PARTITIONS`` (default 4); names are prefixed with ``RECO_TOPIC_PREFIX``
(default ``reco.``).
"""

from __future__ import annotations

from dataclasses import dataclass

from streamproc.settings import Settings

__all__ = ["Topics"]


@dataclass(frozen=True)
class Topics:
    """Topic names and partition counts derived from settings.

    Examples
    --------
    >>> Topics.from_settings(Settings(topic_prefix="app.")).events
    'app.events'
    """

    events: str
    dead_letters: str
    examples: str
    model_updates: str
    requests: str
    recommendations: str
    partitions: int
    control: str = ""  # erasure requests (:mod:`streamproc.control`); "" = none (no control consumer)
    items: str = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> Topics:
        p = settings.topic_prefix
        return cls(
            events=f"{p}events",
            dead_letters=f"{p}events.dlq",
            examples=f"{p}examples",
            model_updates=f"{p}model-updates",
            requests=f"{p}rec-requests",
            recommendations=f"{p}recommendations",
            partitions=settings.partitions,
            control=f"{p}control",
            items=f"{p}items",
        )

    def plan(self) -> dict[str, int]:
        """Topic name → partition count."""
        return {
            self.events: self.partitions,
            self.dead_letters: 1,
            self.examples: 1,
            self.model_updates: 1,
            self.requests: self.partitions,
            self.recommendations: self.partitions,
            **({self.control: 1} if self.control else {}),
            **({self.items: self.partitions} if self.items else {}),
        }

    def configs(self) -> dict[str, dict[str, str]]:
        """Topic name → topic configs set at creation (only where they differ from the broker's defaults)."""
        return {self.items: {"cleanup.policy": "compact"}} if self.items else {}
