"""``/try``: be the user. Pick a user, see their top 10 with titles, act, watch the model react.

The page (``static/try.html`` + ``try.js``, no CDN) posts feedback through the public
``POST /v1/events`` and reads :func:`routes`' ``/try/state``: the user's top-k with titles and
categories, and — from :class:`FeedbackLog`, a model-store listener — when each of the user's
recent events became visible in the served model ("visible after 0.23 s, model v812").

The write key: with ``reco serve --try-writes`` (what ``reco demo`` runs) ``/try/session`` hands
the configured API key to the page's own script — only to same-origin requests (browsers send
``Sec-Fetch-Site``; no CORS headers are ever sent, so other origins cannot read it) — so the
demo needs no typing. Without it the page asks for the key and keeps it in the tab's session
storage.

Examples
--------
>>> log = FeedbackLog(clock=lambda: 100.5)
>>> from trainer.updates import ModelUpdate
>>> class M: version = 7
>>> log.on_swap(M(), ModelUpdate({"version": 7, "kind": "delta", "base_version": 6, "published": [["u1", "i3", 100.0]]}))
>>> log.recent("u1")
[{'item_id': 'i3', 'published': 100.0, 'version': 7, 'visible_at': 100.5, 'latency_s': 0.5}]
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from serving.catalog import Catalog
from serving.dashboard import STATIC_DIR
from serving.settings import ServingSettings

__all__ = ["FeedbackLog", "routes"]

# (user_id, k, exclude_seen) -> the /v1 recommendations body, or None when nothing can answer yet
Recommend = Callable[[str, int, bool], "dict[str, Any] | None"]

_PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "Referrer-Policy": "no-referrer",
}


class FeedbackLog:
    """When each user's recent feedback became visible: a :class:`~serving.store.ModelStore`
    listener reading the ``published`` entries of every swapped-in update.

    Parameters
    ----------
    users
        Users remembered (least recently active forgotten first).
    per_user
        Entries remembered per user.
    clock
        Wall clock (Unix s); the same clock as the publish times.
    """

    def __init__(self, users: int = 10_000, per_user: int = 20, *, clock: Callable[[], float] = time.time) -> None:
        self.users, self.per_user, self.clock = users, per_user, clock
        self._log: OrderedDict[str, deque[dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def on_swap(self, model: Any, update: Any) -> None:
        published = update.header.published  # trainer.updates.UpdateHeader: [(user_id, item_id, published)]
        if not published:
            return
        now = self.clock()
        with self._lock:
            for entry in published:
                try:
                    user, item, pub = str(entry[0]), str(entry[1]), float(entry[2])
                except (IndexError, TypeError, ValueError):
                    continue
                q = self._log.pop(user, None) or deque(maxlen=self.per_user)
                q.append({"item_id": item, "published": pub, "version": model.version, "visible_at": now,
                          "latency_s": round(max(0.0, now - pub), 4)})
                self._log[user] = q
            while len(self._log) > self.users:
                self._log.popitem(last=False)

    def recent(self, user_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._log.get(user_id, ()))


def routes(settings: ServingSettings, recommend: Recommend, catalog: Catalog, feedback: FeedbackLog, *,
           try_writes: bool = False, read_ok: Callable[[Request], bool] = lambda r: True) -> list[BaseRoute]:
    """The ``/try`` page, its state and session endpoints, and its static files."""

    async def page(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "try.html", media_type="text/html", headers=_PAGE_HEADERS)

    async def session(request: Request) -> Response:
        # Only the page's own script: a cross-site or cross-origin request never gets the key.
        site = request.headers.get("sec-fetch-site")
        origin = request.headers.get("origin")
        host = request.headers.get("host", "")
        if (site is not None and site != "same-origin") or (origin is not None and origin.split("://", 1)[-1] != host):
            return JSONResponse({"detail": "forbidden", "message": "the /try session is for the page's own origin"}, status_code=403)
        if settings.auth_disabled:
            body: dict[str, Any] = {"writes": "open"}
        elif not settings.api_key:
            body = {"writes": "off", "message": "no API key is configured (RECO_API_KEY): writes are refused"}
        elif try_writes:
            body = {"writes": "key", "api_key": settings.api_key}
        else:
            body = {"writes": "ask"}
        body["read_key_required"] = settings.read_api_key_required and not settings.auth_disabled
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    async def state(request: Request) -> Response:
        if not read_ok(request):
            return JSONResponse({"detail": "unauthorized", "message": "missing or wrong X-API-Key"}, status_code=401)
        q = request.query_params
        user = q.get("user", "")[:256]
        try:
            k = max(1, min(50, int(q.get("k", "10"))))
        except ValueError:
            return JSONResponse({"detail": "invalid_k", "message": "k must be an integer"}, status_code=400)
        body: dict[str, Any] = {"server_time": time.time(), "user_id": user, "catalog": catalog.source}
        rec = recommend(user, k, True) if user else None
        if rec is None:
            body.update(items=[], version=None, fallback=None, model=False)
        else:
            items = [{**i, **catalog.describe(i["item_id"])} for i in rec["items"]]
            body.update(items=items, version=rec["version"], fallback=rec["fallback"], model=rec["version"] is not None)
        body["feedback"] = [{**f, "title": catalog.describe(f["item_id"])["title"]} for f in feedback.recent(user)] if user else []
        if q.get("users"):
            body["users"] = catalog.users[:50]
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    return [
        Route("/try", page, methods=["GET"], name="try"),
        Route("/try/session", session, methods=["GET"], name="try_session"),
        Route("/try/state", state, methods=["GET"], name="try_state"),
        Mount("/try/static", app=StaticFiles(directory=STATIC_DIR), name="try_static"),
    ]
