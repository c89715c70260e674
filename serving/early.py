"""Popularity so far, for the seconds before the first model: ``reco serve`` answers from it.

The trainer publishes its first snapshot some seconds after the first events (~8 s on the demo).
Until then a replica that follows the events topic itself can still answer: the items with the
most feedback so far, minus what the user already touched. :class:`EarlyPopularity` counts them
from the events topic (a group-less consumer, starting at most ``window`` messages back per
partition) and stops consuming once the store holds a model: from then on the model's own
popularity fallback takes over.

Examples
--------
>>> pop = EarlyPopularity()
>>> for user, item in [("a", "i1"), ("b", "i1"), ("b", "i2"), ("c", "i3")]:
...     pop.observe(user, item)
>>> pop.top("new", 2), pop.top("b", 2)
([('i1', 2.0), ('i2', 1.0)], [('i3', 1.0)])
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

# Imported here, on the importing thread: importing aiokafka (which imports kafka-python) on the
# event loop while the model-updates thread imports kafka-python raced into a half-initialised
# ``kafka`` module ("cannot import name 'KafkaConsumer' ... circular import").
import kafka  # noqa: F401
from aiokafka import AIOKafkaConsumer, TopicPartition

from streamproc.kafka import client_config
from streamproc.settings import Settings
from streamproc.topics import Topics

__all__ = ["EarlyPopularity"]

log = logging.getLogger(__name__)


class EarlyPopularity:
    """Feedback counts per item and the items each (recent) user touched.

    Parameters
    ----------
    seen_users
        Users whose touched items are remembered (least recently active forgotten first).
    seen_per_user
        Items remembered per user.
    """

    def __init__(self, seen_users: int = 100_000, seen_per_user: int = 200) -> None:
        self.seen_users, self.seen_per_user = seen_users, seen_per_user
        self._counts: Counter[str] = Counter()
        self._seen: OrderedDict[str, list[str]] = OrderedDict()
        self.events = 0
        self.active = True  # False once a model took over (consumer stopped, counts dropped)

    def observe(self, user_id: str, item_id: str) -> None:
        self.events += 1
        self._counts[item_id] += 1
        seen = self._seen.pop(user_id, None) or []
        if item_id not in seen:
            seen = (seen + [item_id])[-self.seen_per_user :]
        self._seen[user_id] = seen
        if len(self._seen) > self.seen_users:
            self._seen.popitem(last=False)

    def top(self, user_id: str, k: int, exclude_seen: bool = True) -> list[tuple[str, float]]:
        """The ``k`` items with the most feedback so far, without those the user touched."""
        skip = set(self._seen.get(user_id, ())) if exclude_seen else set()
        out = []
        for item, n in self._counts.most_common(k + len(skip)):
            if item not in skip:
                out.append((item, float(n)))
                if len(out) == k:
                    break
        return out

    def retire(self) -> None:
        """A model is loaded: forget everything (the model's fallback answers from now on)."""
        self.active = False
        self._counts.clear()
        self._seen.clear()

    # ------------------------------------------------------------------ following the topic
    async def follow(self, settings: Settings, model_loaded: Callable[[], bool], *, window: int = 10_000) -> None:
        """Count events from the events topic until ``model_loaded()``; then :meth:`retire`."""
        topic = Topics.from_settings(settings).events
        consumer = AIOKafkaConsumer(enable_auto_commit=False, fetch_max_wait_ms=100, **client_config(settings, aio=True))
        try:
            await consumer.start()
            parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
            if not parts:
                log.info("early popularity: topic %s not found; answering 503 until the first model", topic)
                return
            consumer.assign(parts)
            ends = await consumer.end_offsets(parts)
            starts = await consumer.beginning_offsets(parts)
            for tp in parts:
                consumer.seek(tp, max(starts[tp], ends[tp] - window))
            while not model_loaded():
                batches = await consumer.getmany(timeout_ms=200, max_records=2000)
                for records in batches.values():
                    for rec in records:
                        self._observe_raw(rec.value)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the fallback is a nicety; serving goes on without it
            log.warning("early popularity stopped: %s", exc)
        finally:
            self.retire()
            try:
                await consumer.stop()
            except Exception:  # noqa: BLE001
                pass

    def _observe_raw(self, value: Any) -> None:
        try:
            ev = json.loads(value)
            user, item = ev["user_id"], ev["item_id"]
        except (ValueError, TypeError, KeyError):
            return  # invalid events are streamproc's business (dead letters), not ours
        if isinstance(user, str) and isinstance(item, str):
            self.observe(user, item)
