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
model-updates     trainer → every serving replica 1           none; deltas, versions in order
model-snapshots   trainer → serving replicas      1           none; full snapshots (chunked),
                  (at start and after a gap)                  each naming the model-updates
                                                              offset its deltas start at
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

Retention (:meth:`Topics.configs`, set at creation): ``model-snapshots`` keeps at least the last
two snapshots and ``model-updates`` at least the deltas after the older of them:
``retention.ms`` = max(10 min, 10 × ``RECO_SNAPSHOT_INTERVAL_S``) on both (a replica starting from
the older snapshot still finds every delta after it; a snapshot takes longer than one interval to
publish at 1M users, hence the margin). Kafka deletes whole segments, so more may stay.
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
    model_snapshots: str = ""
    update_retention_ms: int = 600_000  # model-updates and model-snapshots (see the module docstring)

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
            model_snapshots=f"{p}model-snapshots",
            update_retention_ms=int(max(600.0, 10 * settings.snapshot_interval_s) * 1000),
        )

    def plan(self) -> dict[str, int]:
        """Topic name → partition count."""
        return {
            self.events: self.partitions,
            self.dead_letters: 1,
            self.examples: 1,
            self.model_updates: 1,
            **({self.model_snapshots: 1} if self.model_snapshots else {}),
            self.requests: self.partitions,
            self.recommendations: self.partitions,
            **({self.control: 1} if self.control else {}),
            **({self.items: self.partitions} if self.items else {}),
        }

    def configs(self) -> dict[str, dict[str, str]]:
        """Topic name → topic configs set at creation (only where they differ from the broker's defaults)."""
        out = {self.items: {"cleanup.policy": "compact"}} if self.items else {}
        retention = {"retention.ms": str(self.update_retention_ms)}
        out[self.model_updates] = retention
        if self.model_snapshots:
            out[self.model_snapshots] = retention
        return out
