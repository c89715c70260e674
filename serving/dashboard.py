"""``/dashboard``: a self-contained live page of the loop's numbers (no CDN, no Grafana)."""

from __future__ import annotations

from typing import Any

from streamproc.settings import Settings


def routes(settings: Settings, registry: Any = None) -> list[Any]:
    """Starlette routes of the dashboard (page + JSON data); mounted by the serving app."""
    return []
