"""Titles and categories of items, for people: the ``/try`` page shows them next to item ids.

Serving-side only: the model and its updates know ids, never titles. The file is JSON, written by
``reco demo`` from the demo generator or a MovieLens ``movies.csv``
(:meth:`streamproc.demo_data.DemoData.catalog`, :func:`streamproc.replay.load_catalog`)::

    {"source": "...", "items": {"i1": {"title": "...", "category": "..."}, ...},
     "users": [{"user_id": "u1", "likes": ["Comedy"], "dislikes": "Horror"}, ...]}

Examples
--------
>>> c = Catalog({"i1": {"title": "Quiet Years (1990)", "category": "Drama"}})
>>> c.describe("i1"), c.describe("i9")
({'title': 'Quiet Years (1990)', 'category': 'Drama'}, {'title': 'i9', 'category': ''})
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from streamproc.errors import RecoError

__all__ = ["Catalog", "CatalogError"]


class CatalogError(RecoError, ValueError):
    """The catalogue file is missing or malformed; the message names the file and the problem."""


class Catalog:
    """Item id → title and category, plus a few example users (for the ``/try`` user picker).

    Parameters
    ----------
    items
        ``{item_id: {"title": str, "category": str}}``.
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

    @classmethod
    def load(cls, path: str | Path) -> "Catalog":
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

    def describe(self, item_id: str) -> dict[str, str]:
        """``{"title", "category"}`` of an item (its id as the title when unknown)."""
        return self.items.get(item_id) or {"title": item_id, "category": ""}
