"""The live item catalogue and the request-time rules it serves.

Two sources, one :class:`Catalog`:

- the **items topic** (compacted, keyed by ``item_id``; contract: :mod:`streamproc.items`): every
  replica reads it from the beginning (:class:`CatalogFollower`, no consumer group) and keeps
  following it; the newest record per item wins (``updated_at``, then topic order), a tombstone
  removes the item;
- the optional JSON file of ``reco serve --catalog`` (written by ``reco demo``): titles and a
  category per item plus a few example users for the ``/try`` page::

    {"source": "...", "items": {"i1": {"title": "...", "category": "..."}, ...},
     "users": [{"user_id": "u1", "likes": ["Comedy"], "dislikes": "Horror"}, ...]}

  File entries count as available items with that one category; any topic record replaces them.

Request-time rules (:class:`Rules`, from ``GET /v1/users/{id}/recommendations`` query parameters
or a request message on the requests topic): ``category`` (any-of), ``exclude`` (item ids),
``fields`` (``title``, ``categories``). Unavailable items are never returned, with or without
rules. :meth:`Catalog.recommend` turns the rules into item rows of the served model and ranks
only the eligible rows (mask before top-k), so an answer has ``k`` items whenever ``k`` eligible
items exist.

Examples
--------
>>> c = Catalog({"i1": {"title": "Quiet Years (1990)", "category": "Drama"}})
>>> c.describe("i1"), c.describe("i9")
({'title': 'Quiet Years (1990)', 'category': 'Drama'}, {'title': 'i9', 'category': ''})
>>> c.apply_json(b'{"item_id":"i1","title":"Quiet Years","categories":["Drama"],"available":false,"updated_at":1.7e9}')
True
>>> c.available("i1"), c.size, c.unavailable_count
(False, 1, 1)
>>> Rules.from_query({"category": ["Drama,Comedy"], "exclude": ["i3"], "fields": ["title"]})
Rules(categories=('Drama', 'Comedy'), exclude=('i3',), fields=('title',))
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamproc.errors import InvalidEvent, RecoError
from streamproc.items import ItemRecord, ItemValidator
from streamproc.settings import Settings

__all__ = ["Catalog", "CatalogError", "CatalogFollower", "Rules", "RuleError", "FIELDS", "MAX_EXCLUDE", "MAX_CATEGORIES_PER_REQUEST"]

log = logging.getLogger(__name__)

FIELDS = ("title", "categories")  # what ``fields=`` may add to each answer item
MAX_EXCLUDE = 1000
MAX_CATEGORIES_PER_REQUEST = 50


class CatalogError(RecoError, ValueError):
    """The catalogue file is missing or malformed; the message names the file and the problem."""


class RuleError(RecoError, ValueError):
    """A request-time rule is malformed; ``field`` names the parameter (``category``, ``exclude``, ``fields``)."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _split(values: Iterable[Any], field: str, *, limit: int, max_len: int = 256) -> tuple[str, ...]:
    out: list[str] = []
    for raw in values:
        if not isinstance(raw, str):
            raise RuleError(f"{field} must be a string or a list of strings, got {type(raw).__name__}", field=field)
        if _CONTROL.search(raw):
            raise RuleError(f"{field} has control characters", field=field)
        for part in raw.split(","):
            part = part.strip()
            if not part:
                raise RuleError(f"{field} has an empty value", field=field)
            if len(part) > max_len:
                raise RuleError(f"{field} value {part[:40]!r} is longer than {max_len} characters", field=field)
            out.append(part)
    out = list(dict.fromkeys(out))
    if len(out) > limit:
        raise RuleError(f"{field} has {len(out)} values, at most {limit} are allowed", field=field)
    return tuple(out)


@dataclass(frozen=True)
class Rules:
    """Request-time rules: ``categories`` (any-of; empty = any), ``exclude`` (item ids), ``fields``."""

    categories: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()

    @property
    def filtered(self) -> bool:
        return bool(self.categories or self.exclude)

    @classmethod
    def build(cls, category: Iterable[Any] = (), exclude: Iterable[Any] = (), fields: Iterable[Any] = ()) -> Rules:
        cats = _split(category, "category", limit=MAX_CATEGORIES_PER_REQUEST, max_len=100)
        ex = _split(exclude, "exclude", limit=MAX_EXCLUDE)
        fl = _split(fields, "fields", limit=len(FIELDS))
        bad = [f for f in fl if f not in FIELDS]
        if bad:
            raise RuleError(f"fields: unknown field {bad[0][:40]!r}; expected any of {', '.join(FIELDS)}", field="fields")
        return cls(cats, ex, fl)

    @classmethod
    def from_query(cls, params: Mapping[str, Sequence[str]] | Any) -> Rules:
        """From query parameters (repeatable or comma-separated): ``category``, ``exclude``, ``fields``.
        ``params`` is starlette's ``QueryParams`` or a dict of lists."""
        get = params.getlist if hasattr(params, "getlist") else (lambda k: params.get(k, []))
        return cls.build(get("category"), get("exclude"), get("fields"))

    @classmethod
    def from_request(cls, req: Mapping[str, Any]) -> Rules:
        """From a request message: each of ``category``, ``exclude``, ``fields`` a string
        (comma-separated) or a list of strings."""
        def values(key: str) -> list[Any]:
            v = req.get(key)
            if v is None:
                return []
            return v if isinstance(v, list) else [v]
        return cls.build(values("category"), values("exclude"), values("fields"))


@dataclass(frozen=True)
class _Entry:
    title: str
    categories: tuple[str, ...]
    available: bool
    updated_at: float


class Catalog:
    """Item id → title, categories, availability; plus a few example users (for ``/try``).

    Thread-safe: a :class:`CatalogFollower` thread applies records while requests read.

    Parameters
    ----------
    items
        ``{item_id: {"title": str, "category": str}}`` (the ``--catalog`` file's items).
    users
        ``[{"user_id", "likes", "dislikes"}]`` to offer on ``/try``.
    source
        Where the catalogue came from, in words.
    """

    def __init__(self, items: dict[str, dict[str, str]] | None = None, users: list[dict[str, Any]] | None = None,
                 source: str = "") -> None:
        self.items = items or {}
        self.users = users or []
        self.source = source
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {
            k: _Entry(v.get("title") or k, (v["category"],) if v.get("category") else (), True, 0.0) for k, v in self.items.items()
        }
        self._by_category: dict[str, set[str]] = {}
        self._unavailable: set[str] = set()
        for k, e in self._entries.items():
            for c in e.categories:
                self._by_category.setdefault(c, set()).add(k)
        self.version = 0  # bumped by every change
        self._set_versions: dict[str, int] = {}  # category (or "" for unavailable) -> bumped when its members change
        self._rows_cache: dict[str, tuple[int, list[str], int, np.ndarray]] = {}
        self.invalid = 0  # topic records that failed validation (skipped; streamproc dead-letters them)

    @classmethod
    def load(cls, path: str | Path) -> Catalog:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise CatalogError(f"--catalog {path}: cannot read ({exc.strerror or exc})") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise CatalogError(f"--catalog {path}: not JSON ({exc})") from None
        items = data.get("items") if isinstance(data, dict) else None
        if not isinstance(items, dict):
            raise CatalogError(f'--catalog {path}: expected {{"items": {{item_id: {{"title", "category"}}}}}}')
        clean: dict[str, dict[str, str]] = {}
        for key, val in items.items():
            if not isinstance(val, dict):
                raise CatalogError(f"--catalog {path}: item {key!r} is not an object")
            clean[str(key)] = {"title": str(val.get("title") or key), "category": str(val.get("category") or "")}
        users = [u for u in data.get("users") or [] if isinstance(u, dict) and u.get("user_id")]
        return cls(clean, users, str(data.get("source") or path))

    # ------------------------------------------------------------------ updating
    def apply(self, rec: ItemRecord) -> bool:
        """Apply one valid record; False when an older ``updated_at`` than the record held (ignored)."""
        new = _Entry(rec.title, tuple(dict.fromkeys(rec.categories)), rec.available, rec.updated_at)
        with self._lock:
            old = self._entries.get(rec.item_id)
            if old is not None and old.updated_at > new.updated_at:
                return False
            self._set(rec.item_id, old, new)
            return True

    def remove(self, item_id: str) -> bool:
        """Forget an item (a tombstone); True when it was known."""
        with self._lock:
            old = self._entries.get(item_id)
            if old is None:
                return False
            self._set(item_id, old, None)
            return True

    def _set(self, item_id: str, old: _Entry | None, new: _Entry | None) -> None:
        sv = self._set_versions
        for c in set(old.categories if old is not None else ()) ^ set(new.categories if new is not None else ()):
            sv[c] = sv.get(c, 0) + 1
        if (old is not None and not old.available) != (new is not None and not new.available):
            sv[""] = sv.get("", 0) + 1
        if old is not None:
            for c in old.categories:
                members = self._by_category.get(c)
                if members is not None:
                    members.discard(item_id)
                    if not members:
                        del self._by_category[c]
        if new is None:
            self._entries.pop(item_id, None)
            self._unavailable.discard(item_id)
        else:
            self._entries[item_id] = new
            for c in new.categories:
                self._by_category.setdefault(c, set()).add(item_id)
            if new.available:
                self._unavailable.discard(item_id)
            else:
                self._unavailable.add(item_id)
        self.version += 1

    def apply_json(self, value: bytes | None, key: bytes | None = None, *, validator: ItemValidator | None = None) -> bool:
        """Apply one message of the items topic (None value + key: a tombstone). Invalid records
        are counted in :attr:`invalid` and skipped; returns whether the catalogue changed."""
        if value is None:
            return self.remove(key.decode("utf-8", "replace")) if key else False
        try:
            rec = (validator or ItemValidator(Settings())).parse(value)
        except InvalidEvent:
            self.invalid += 1
            return False
        return self.apply(rec)

    # ------------------------------------------------------------------ reading
    @property
    def size(self) -> int:
        return len(self._entries)

    @property
    def unavailable_count(self) -> int:
        return len(self._unavailable)

    def available(self, item_id: str) -> bool:
        """False only for items the catalogue marks unavailable (unknown items are available)."""
        return item_id not in self._unavailable

    def categories(self, item_id: str) -> tuple[str, ...]:
        e = self._entries.get(item_id)
        return e.categories if e is not None else ()

    def describe(self, item_id: str) -> dict[str, str]:
        """``{"title", "category"}`` of an item (its id as the title when unknown)."""
        e = self._entries.get(item_id)
        if e is None:
            return self.items.get(item_id) or {"title": item_id, "category": ""}
        return {"title": e.title, "category": e.categories[0] if e.categories else ""}

    def fields(self, item_id: str, names: Sequence[str]) -> dict[str, Any]:
        """The requested ``fields`` of an item: ``title`` (its id when unknown), ``categories``."""
        e = self._entries.get(item_id)
        out: dict[str, Any] = {}
        for name in names:
            if name == "title":
                out["title"] = e.title if e is not None else item_id
            elif name == "categories":
                out["categories"] = list(e.categories) if e is not None else []
        return out

    def category_members(self, categories: Sequence[str]) -> list[str]:
        """Item ids in any of ``categories``."""
        with self._lock:
            sets = [self._by_category.get(c, ()) for c in categories]
            if len(sets) == 1:
                return list(sets[0])
            return list(set().union(*sets))

    def unavailable_ids(self) -> list[str]:
        with self._lock:
            return list(self._unavailable)

    # ------------------------------------------------------------------ answering
    def _rows(self, model: Any, key: str) -> np.ndarray:
        """Rows of ``model`` holding the members of category ``key`` ("" = the unavailable items),
        cached until the members or the model's row space change (a delta with new items, a snapshot)."""
        ids, n = model.item_row_space
        version = self._set_versions.get(key, 0)
        hit = self._rows_cache.get(key)
        if hit is not None and hit[0] == version and hit[1] is ids and hit[2] == n:
            return hit[3]
        with self._lock:
            members = list(self._unavailable) if key == "" else list(self._by_category.get(key, ()))
        rows = np.unique(model.item_rows(members))
        rows.flags.writeable = False
        if len(self._rows_cache) > 1024:  # bounded: a flood of distinct categories starts over
            self._rows_cache.clear()
        self._rows_cache[key] = (version, ids, n, rows)
        return rows

    def masks(self, model: Any, rules: Rules) -> tuple[np.ndarray | None, np.ndarray]:
        """``(allowed, blocked)`` item rows of ``model`` for ``rules``: ``allowed`` None = every row;
        ``blocked`` = unavailable + excluded rows."""
        allowed = None
        if rules.categories:
            parts = [self._rows(model, c) for c in rules.categories]
            allowed = parts[0] if len(parts) == 1 else np.concatenate(parts)  # duplicates are harmless (a row mask)
        blocked = self._rows(model, "") if self._unavailable else np.empty(0, np.int64)
        if rules.exclude:
            blocked = np.concatenate([blocked, model.item_rows(rules.exclude)])
        return allowed, blocked

    def recommend(self, model: Any, user_id: str, k: int, exclude_seen: bool = True, rules: Rules = Rules()) -> dict[str, Any]:
        """The model's answer under ``rules`` as a JSON-ready dict (``fields`` added per item)."""
        allowed, blocked = self.masks(model, rules)
        out = model.recommend(user_id, k, exclude_seen, allowed=allowed, blocked=blocked).to_dict()
        if rules.fields:
            for item in out["items"]:
                item.update(self.fields(item["item_id"], rules.fields))
        return out

    def filter_items(self, items: list[tuple[str, float]], k: int, rules: Rules) -> list[tuple[str, float]]:
        """``items`` (best first) without unavailable, excluded or out-of-category ones, cut to ``k``
        (for answers that do not come from a model: the popularity before the first model)."""
        cats = set(rules.categories)
        ex = set(rules.exclude)
        out = []
        for i, s in items:
            if i in ex or i in self._unavailable or (cats and not cats.intersection(self.categories(i))):
                continue
            out.append((i, s))
            if len(out) == k:
                break
        return out


class CatalogFollower(threading.Thread):
    """Reads the items topic from the beginning into a :class:`Catalog`, then follows it (daemon thread).

    Every replica reads every partition itself (``assign``, no group). ``caught_up`` is set once
    the records present at start-up are applied (or the topic does not exist).
    """

    def __init__(self, settings: Settings, catalog: Catalog, *, poll_ms: int = 100, on_change: Any = None) -> None:
        super().__init__(name="catalogue", daemon=True)
        from streamproc.topics import Topics

        self.settings, self.catalog, self.poll_ms = settings, catalog, poll_ms
        self.topic = Topics.from_settings(settings).items
        self.validator = ItemValidator(settings)
        self.caught_up = threading.Event()
        self.on_change = on_change
        self.applied = 0
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        from streamproc.kafka import TopicIdWatch, client_config

        positions: dict[int, int] = {}
        topic_id = TopicIdWatch(self.settings, self.topic)  # a new id: the topic was recreated, positions are void
        while not self._halt.is_set():
            try:
                consumer = KafkaConsumer(enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=50,
                                         request_timeout_ms=15_000, **client_config(self.settings))
            except Exception as exc:  # noqa: BLE001 - broker down: retry
                log.warning("catalogue: Kafka not reachable (%s); retrying", exc)
                self._halt.wait(1.0)
                continue
            try:
                parts = sorted(consumer.partitions_for_topic(self.topic) or [])
                if not parts:
                    log.info("catalogue: topic %s not found (yet); no catalogue rules apply until it exists", self.topic)
                    self.caught_up.set()
                    self._halt.wait(5.0)
                    continue
                tps = [TopicPartition(self.topic, p) for p in parts]
                consumer.assign(tps)
                if topic_id.recreated():  # the first look only remembers the id
                    positions.clear()
                for tp in tps:
                    if tp.partition in positions:
                        consumer.seek(tp, positions[tp.partition])
                    else:
                        consumer.seek_to_beginning(tp)
                ends = consumer.end_offsets(tps) if not self.caught_up.is_set() else {}
                quiet = 0
                last_ok, connected = time.monotonic(), True
                while not self._halt.is_set():
                    batch = consumer.poll(timeout_ms=self.poll_ms, max_records=2000)
                    if batch:
                        last_ok, connected = time.monotonic(), True
                    elif time.monotonic() - last_ok > 2.0:
                        try:  # a cheap round trip: is Kafka reachable (again)? Fails fast, so an outage shows
                            consumer.end_offsets(tps, timeout_ms=2000)
                        except Exception:  # noqa: BLE001
                            connected = False
                        else:
                            last_ok = time.monotonic()
                            if not connected and topic_id.recreated():  # back after an outage, topic recreated
                                positions.clear()
                                for tp in tps:
                                    consumer.seek(tp, 0)
                            connected = True
                    changed = 0
                    for tp, recs in batch.items():
                        for r in recs:
                            changed += self.catalog.apply_json(r.value, r.key, validator=self.validator)
                            positions[tp.partition] = r.offset + 1
                    self.applied += sum(len(v) for v in batch.values())
                    if changed and self.on_change is not None:
                        self.on_change()
                    if not self.caught_up.is_set():
                        quiet = 0 if batch else quiet + 1
                        # Tansu's end offset can lag by a batch: one quiet poll at the end confirms it.
                        if all(consumer.position(tp) >= ends.get(tp, 0) for tp in tps) and quiet >= 1:
                            self.caught_up.set()
                            log.info("catalogue: %d items (%d unavailable) from %s", self.catalog.size,
                                     self.catalog.unavailable_count, self.topic)
                return
            except Exception as exc:  # noqa: BLE001
                log.warning("catalogue consumer failed (%s); reconnecting", exc)
                self._halt.wait(1.0)
            finally:
                try:
                    consumer.close()
                except Exception:  # noqa: BLE001
                    pass


def wait_caught_up(follower: CatalogFollower | None, timeout: float) -> bool:
    """Whether ``follower`` (None: nothing to wait for) caught up within ``timeout`` seconds."""
    if follower is None:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if follower.caught_up.wait(0.05):
            return True
    return follower.caught_up.is_set()
