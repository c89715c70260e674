"""The HTTP API of ``reco serve`` (starlette on uvicorn).

==========================================  ====================================================
``GET /v1/users/{user_id}/recommendations``  ``?k=10&exclude_seen=true`` → items with scores, the
                                             model version, whether the fallback was used; before
                                             the first model, popularity so far (``"fallback":
                                             true, "version": null``) once events were seen;
                                             rules: ``category=`` (any-of), ``exclude=`` (ids),
                                             ``fields=title,categories`` (:mod:`serving.catalog`)
``POST /v1/items``                           batch of item records (JSON list or ``{"items":
                                             [...]}``) to the compacted items topic; ``X-API-Key``
``POST /v1/events``                          batch of events (JSON list or ``{"events": [...]}``),
                                             validated and published keyed by user; needs
                                             ``X-API-Key``
``DELETE /v1/users/{user_id}``               erasure request (:mod:`streamproc.control`) on the
``DELETE /v1/items/{item_id}``               control topic; 202 with the acknowledgement once the
                                             broker has it; ``X-API-Key`` (README "Erasure")
``GET /healthz``                             alive
``GET /readyz``                              200 once a model is loaded and Kafka reachable,
                                             else 503 with the reasons
``GET /metrics``                             Prometheus text format
``GET /try``                                 the "be the user" page (:mod:`serving.try_page`)
``GET /v1/items/{item_id}/feedback``         an item's comment sentiment, ratings and trend;
                                             ``GET /v1/items/feedback?order=falling`` lists the
                                             items slipping fastest (:mod:`serving.feedback`)
==========================================  ====================================================

Errors are JSON ``{"detail": <code>, "message": <text>}`` with a bounded ``detail`` code.

Examples
--------
>>> from starlette.testclient import TestClient
>>> with TestClient(create_app(ServingSettings(), start_kafka=False)) as client:
...     client.get("/v1/users/u1/recommendations").json()["detail"]
'no_model'
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypedDict

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.datastructures import State
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from serving import dashboard, try_page
from serving.catalog import Catalog, RuleError, Rules
from serving.early import EarlyPopularity
from serving.feedback import FeedbackView
from serving.feedback import routes as feedback_routes
from serving.kafka_io import KafkaIO
from serving.metrics import ServingMetrics
from serving.settings import ServingSettings
from serving.store import ModelStore
from streamproc.control import ControlRecord, InvalidControl
from streamproc.errors import InvalidEvent
from streamproc.events import SCHEMA_VERSION, EventValidator
from streamproc.items import ItemValidator
from streamproc.topics import Topics

__all__ = ["create_app", "EventSink"]

log = logging.getLogger(__name__)

# (topic, [(key, value, headers)]) → awaitable; replaces Kafka in unit tests.
Message = tuple[bytes | None, bytes, list[tuple[str, bytes]]]
EventSink = Callable[[str, list[Message]], Awaitable[None]]

PUBLISH_TIMEOUT_S = 10.0  # a write waits at most this long for Kafka, then gets a 503

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class Clients(TypedDict):
    """What the lifespan starts (``app.state.kafka``); None before start-up and after shutdown."""

    kafka: KafkaIO | None
    early_task: asyncio.Task[None] | None


class _Json(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode()


def _error(status: int, detail: str, message: str, **extra: Any) -> Response:
    return _Json({"detail": detail, "message": message, **extra}, status_code=status)


class _Timing:
    """ASGI middleware: ``reco_serving_requests_total{route,status}`` and request latency by route."""

    def __init__(self, app: Any, metrics: ServingMetrics, names: dict[Any, str]) -> None:
        self.app, self.metrics, self.names = app, metrics, names

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [500]

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = self.names.get(scope.get("endpoint"), "other")
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.request_duration.labels(route).observe(time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------- helpers
# Every handler reads what it needs from ``request.app.state`` (set up by ``create_app``): settings,
# store, metrics, registry, catalog, topics, validator, item_validator, early, feedback, event_sink,
# start_kafka and kafka (:class:`Clients`).

def _kafka_ok(state: State) -> bool:
    kio = state.kafka["kafka"]
    return kio is not None and kio.connected


def _refresh_gauges(state: State) -> tuple[bool, list[str]]:
    """Readiness (and its reasons) onto the gauges; returns it for ``/readyz``."""
    reasons = []
    if state.store.current is None:
        reasons.append("no_model")
    connected = _kafka_ok(state)
    if not connected:
        reasons.append("kafka_unreachable" if state.start_kafka else "kafka_not_started")
    kio = state.kafka["kafka"]
    if kio is not None and kio.catalog_follower is not None and not kio.catalog_follower.caught_up.is_set():
        reasons.append("catalog_catching_up")  # hidden items could still be served
    metrics: ServingMetrics = state.metrics
    metrics.catalog_items.set(state.catalog.size)
    metrics.catalog_unavailable.set(state.catalog.unavailable_count)
    metrics.kafka_connected.set(1 if connected else 0)
    metrics.ready.set(0 if reasons else 1)
    return not reasons, reasons


def _key_ok(settings: ServingSettings, request: Request) -> bool:
    given = request.headers.get("x-api-key", "")
    return bool(settings.api_key) and hmac.compare_digest(given.encode(), settings.api_key.encode())


def read_ok(request: Request) -> bool:
    """Whether a read may go ahead (no read key required, auth disabled, or the right key)."""
    settings: ServingSettings = request.app.state.settings
    return not settings.read_api_key_required or settings.auth_disabled or _key_ok(settings, request)


def _write_refused(request: Request) -> Response | None:
    """The error for a write without the API key (None: allowed)."""
    settings: ServingSettings = request.app.state.settings
    if settings.auth_disabled:
        return None
    if not settings.api_key:
        return _error(403, "writes_disabled", "no API key is configured (RECO_API_KEY); writes are refused")
    if not _key_ok(settings, request):
        return _error(401, "unauthorized", "missing or wrong X-API-Key")
    return None


async def _json_list(request: Request, key: str, what: str) -> list[Any] | Response:
    """The body as a JSON list (or ``{key: [...]}``), at most ``max_body_bytes``; else the error."""
    limit = request.app.state.settings.max_body_bytes
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        return _error(413, "body_too_large", f"request body larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return _error(413, "body_too_large", f"request body larger than {limit} bytes")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return _error(400, "invalid_json", "body is not valid JSON")
    if isinstance(body, dict) and isinstance(body.get(key), list):
        body = body[key]
    if not isinstance(body, list):
        return _error(400, "invalid_body", f'body must be a JSON list of {what} or {{"{key}": [...]}}')
    return body


async def _publish(state: State, topic: str, messages: list[Message], what: str) -> Response | None:
    """Publish to Kafka (or the test sink); the 503 to answer when the broker fails (None: done)."""
    kio: KafkaIO | None = state.kafka["kafka"]
    sink: EventSink | None = state.event_sink
    try:
        if kio is not None:
            await asyncio.wait_for(kio.publish(topic, messages), PUBLISH_TIMEOUT_S)
        elif sink is not None:
            await asyncio.wait_for(sink(topic, messages), PUBLISH_TIMEOUT_S)
        else:
            return _error(503, "kafka_unavailable", "no Kafka producer")
    except Exception as exc:  # noqa: BLE001 - broker trouble is the client's 503, not a 500
        log.warning("publishing %s failed: %s", what, exc)
        return _error(503, "kafka_unavailable", f"{what} could not be published; retry")
    return None


async def _accept(state: State, body: list[Any], parse: Callable[[Any], tuple[str, bytes, bytes]], topic: str,
                  what: str, none_valid: tuple[str, str]) -> Response:
    """Validate each element (``parse`` -> id, key, value), publish the valid ones, answer 202
    with the accepted ids and per-element errors (400 when none was valid, 503 on broker trouble)."""
    accepted: list[str] = []
    errors: list[dict[str, Any]] = []
    messages: list[Message] = []
    for n, obj in enumerate(body):
        try:
            ident, key, value = parse(obj)
        except InvalidEvent as exc:
            errors.append({"index": n, "field": exc.field, "reason": exc.reason, "message": str(exc)})
            continue
        accepted.append(ident)
        messages.append((key, value, []))
    if messages and (failed := await _publish(state, topic, messages, what)) is not None:
        return failed
    status = 202 if accepted or not errors else 400
    out: dict[str, Any] = {"accepted": accepted, "errors": errors}
    if status == 400:
        out.update(detail=none_valid[0], message=none_valid[1])
    return _Json(out, status_code=status)


def _event_record(validator: EventValidator, now: float, obj: Any) -> tuple[str, bytes, bytes]:
    """One posted event → (event_id, key, value), with the same defaults as ``EventPublisher.publish``."""
    if isinstance(obj, dict):
        obj = {"schema_version": SCHEMA_VERSION, "event_id": uuid.uuid4().hex, "event_time": now, **obj}
    ev = validator.parse_obj(obj)
    return ev.event_id, ev.user_id.encode(), ev.to_json()


def _item_record(validator: ItemValidator, now: float, obj: Any) -> tuple[str, bytes, bytes]:
    """One posted item record → (item_id, key, value)."""
    rec = validator.parse_obj(validator.complete(obj, now))
    return rec.item_id, rec.item_id.encode(), rec.to_json()


_NO_RULES = Rules()


def recommend(state: State, user_id: str, k: int, exclude_seen: bool, rules: Rules = _NO_RULES) -> dict[str, Any] | None:
    """The served model's answer under the request-time ``rules`` (unavailable items never);
    before the first model, popularity so far (None: nothing yet)."""
    metrics: ServingMetrics = state.metrics
    catalog: Catalog = state.catalog
    early: EarlyPopularity = state.early
    if rules.filtered:
        metrics.count_filtered(rules)
    model = state.store.current
    if model is None:
        if not early.active or not early.events:
            return None
        metrics.fallbacks.inc()
        # every counted item when rules can drop some: the answer is short only when too few are eligible
        want = k if not (rules.filtered or catalog.unavailable_count) else len(early._counts) + k  # noqa: SLF001
        items = catalog.filter_items(early.top(user_id, want, exclude_seen), k, rules)
        answer = [{"item_id": i, "score": s, **catalog.fields(i, rules.fields)} for i, s in items]
        return {"user_id": user_id, "items": answer, "version": None, "fallback": True}
    out = catalog.recommend(model, user_id, k, exclude_seen, rules)
    if out["fallback"]:
        metrics.fallbacks.inc()
    return out


def _forget_feedback(feedback: try_page.FeedbackLog, model: Any, update: Any) -> None:
    """Store listener: erased/expired users leave the ``/try`` page's log."""
    gone = update.header.expired_user_ids  # trainer.updates.UpdateHeader
    if gone:
        with feedback._lock:  # noqa: SLF001 - the log has no removal method yet
            for uid in gone:
                feedback._log.pop(str(uid), None)  # noqa: SLF001


# ----------------------------------------------------------------------------------------- routes
async def recommendations(request: Request) -> Response:
    """``GET /v1/users/{user_id}/recommendations``."""
    settings: ServingSettings = request.app.state.settings
    if not read_ok(request):
        return _error(401, "unauthorized", "missing or wrong X-API-Key")
    q = request.query_params
    raw_k = q.get("k", "10")
    try:
        k = int(raw_k)
    except ValueError:
        return _error(400, "invalid_k", f"k must be an integer, got {raw_k[:40]!r}", field="k")
    if not 1 <= k <= settings.max_k:
        return _error(400, "k_out_of_range", f"k must be between 1 and {settings.max_k}", field="k")
    raw_ex = q.get("exclude_seen", "true").lower()
    if raw_ex not in _TRUE + _FALSE:
        return _error(400, "invalid_exclude_seen", "exclude_seen must be true or false", field="exclude_seen")
    try:
        rules = Rules.from_query(q)
    except RuleError as exc:
        return _error(400, f"invalid_{exc.field}", str(exc), field=exc.field)
    out = recommend(request.app.state, request.path_params["user_id"], k, raw_ex in _TRUE, rules)
    if out is None:
        return _error(503, "no_model", "no model loaded yet and no events seen")
    return _Json(out)


async def events(request: Request) -> Response:
    """``POST /v1/events``: events, validated and published keyed by user."""
    if (refused := _write_refused(request)) is not None:
        return refused
    body = await _json_list(request, "events", "events")
    if isinstance(body, Response):
        return body
    state = request.app.state
    parse = functools.partial(_event_record, state.validator, time.time())
    return await _accept(state, body, parse, state.topics.events, "events", ("no_valid_events", "every event was rejected"))


async def items(request: Request) -> Response:
    """``POST /v1/items``: item records, validated (:mod:`streamproc.items`) and published keyed by item_id."""
    if (refused := _write_refused(request)) is not None:
        return refused
    body = await _json_list(request, "items", "item records")
    if isinstance(body, Response):
        return body
    state = request.app.state
    parse = functools.partial(_item_record, state.item_validator, time.time())
    return await _accept(state, body, parse, state.topics.items, "item records",
                         ("no_valid_items", "every item record was rejected"))


_ERASES = {
    "user": ["the user's model rows (factors, bias, co-occurrence history) and replay-buffer entries",
             "the user's seen list and pushes on every serving replica",
             "training examples of the user's events published before this acknowledgement"],
    "item": ["the item's model rows (factors, bias, popularity, co-occurrence pairs) and replay-buffer entries",
             "the item from every serving replica's answers",
             "training examples of the item's events published before this acknowledgement"],
}


async def _erase(request: Request, kind: str) -> Response:
    """``DELETE /v1/users/{id}`` / ``DELETE /v1/items/{id}``: one erasure record on the control topic."""
    if (refused := _write_refused(request)) is not None:
        return refused
    field = f"{kind}_id"
    try:
        rec = ControlRecord.erase(kind, request.path_params[field])
    except InvalidControl as exc:
        return _error(400, f"invalid_{field}", f"{field}: {str(exc).split(': ', 1)[-1]}", field=field)
    state = request.app.state
    if (failed := await _publish(state, state.topics.control, [(rec.key, rec.to_json(), [])], f"erasure {rec.erasure_id}")) is not None:
        return failed
    state.metrics.erasure_requests.labels(kind=kind).inc()
    return _Json({"status": "accepted", "erasure_id": rec.erasure_id, "kind": kind, field: rec.id,
                  "requested_at": rec.requested_at, "acknowledged_at": time.time(), "erases": _ERASES[kind],
                  "retained": "raw events on the events topic (operator retention), dead letters, logs and "
                              "aggregate metrics: see the README section Erasure"}, status_code=202)


async def erase_user(request: Request) -> Response:
    return await _erase(request, "user")


async def erase_item(request: Request) -> Response:
    return await _erase(request, "item")


async def healthz(request: Request) -> Response:
    return _Json({"status": "alive"})


async def readyz(request: Request) -> Response:
    ok, reasons = _refresh_gauges(request.app.state)
    model = request.app.state.store.current
    body = {"ready": ok, "reasons": reasons, "version": None if model is None else model.version}
    return _Json(body, status_code=200 if ok else 503)


async def metrics_endpoint(request: Request) -> Response:
    _refresh_gauges(request.app.state)
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)


async def http_error(request: Request, exc: Exception) -> Response:
    """404/405 as JSON like every other error."""
    code = getattr(exc, "status_code", 500)
    return _error(code, {404: "not_found", 405: "method_not_allowed"}.get(code, "http_error"), str(getattr(exc, "detail", "")))


ROUTES: list[tuple[Route, str]] = [  # (route, its label in the request metrics)
    (Route("/v1/users/{user_id:path}/recommendations", recommendations, methods=["GET"]), "recommendations"),
    (Route("/v1/events", events, methods=["POST"]), "events"),
    (Route("/v1/users/{user_id:path}", erase_user, methods=["DELETE"]), "erase"),
    (Route("/v1/items/{item_id:path}", erase_item, methods=["DELETE"]), "erase"),
    (Route("/v1/items", items, methods=["POST"]), "items"),
    (Route("/healthz", healthz, methods=["GET"]), "healthz"),
    (Route("/readyz", readyz, methods=["GET"]), "readyz"),
    (Route("/metrics", metrics_endpoint, methods=["GET"]), "metrics"),
]


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Start the Kafka clients (when ``start_kafka``) and early popularity; stop them at shutdown."""
    state = app.state
    clients: Clients = state.kafka
    store: ModelStore = state.store
    if state.start_kafka:
        kio = KafkaIO(state.settings, store, state.metrics, catalog=state.catalog)
        clients["kafka"] = kio
        await kio.start()
        if store.current is None:  # answer from popularity so far until the first model
            clients["early_task"] = asyncio.create_task(state.early.follow(state.settings, lambda: store.current is not None))
        else:
            state.early.retire()
    _refresh_gauges(state)
    try:
        yield
    finally:
        task = clients["early_task"]
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        kio_running = clients["kafka"]
        if kio_running is not None:
            await kio_running.stop()
            clients["kafka"] = None
        state.metrics.ready.set(0)
        state.metrics.kafka_connected.set(0)


def create_app(
    settings: ServingSettings,
    store: ModelStore | None = None,
    start_kafka: bool = True,
    *,
    registry: CollectorRegistry | None = None,
    event_sink: EventSink | None = None,
    catalog: Catalog | None = None,
    try_writes: bool = False,
) -> Starlette:
    """Build the ASGI app.

    Parameters
    ----------
    settings
        Serving settings (API keys, limits, Kafka).
    store
        The model holder; a new one when None. Tests apply updates to it directly.
    start_kafka
        Start the Kafka clients (model-updates follower, requests consumer, producer, push) with
        the app's lifespan.
    registry
        Prometheus registry of the metrics (a fresh one when None); ``/metrics`` serves it.
    event_sink
        Where ``POST /v1/events`` publishes when Kafka is not started (tests).
    catalog
        Titles and categories the ``/try`` page shows (ids only when None).
    try_writes
        Hand the configured API key to the ``/try`` page's own (same-origin) script, so a demo
        needs no typing (``reco serve --try-writes``; ``reco demo`` sets it).
    """
    registry = registry if registry is not None else CollectorRegistry()
    catalog = catalog if catalog is not None else Catalog()
    metrics = store.metrics if store is not None and store.metrics.registry is registry else ServingMetrics(registry)
    store = store if store is not None else ModelStore(settings, metrics)
    feedback = try_page.FeedbackLog()
    store.listeners.append(feedback.on_swap)
    store.listeners.append(functools.partial(_forget_feedback, feedback))

    names: dict[Any, str] = {route.endpoint: name for route, name in ROUTES}
    app = Starlette(routes=[route for route, _ in ROUTES], lifespan=lifespan, exception_handlers={HTTPException: http_error},
                    middleware=[Middleware(_Timing, metrics=metrics, names=names)])
    state = app.state
    state.settings, state.store, state.metrics, state.registry, state.catalog = settings, store, metrics, registry, catalog
    state.topics = Topics.from_settings(settings)
    state.validator, state.item_validator = EventValidator(settings), ItemValidator(settings)
    state.early = EarlyPopularity(seen_per_user=max(1, min(settings.seen_per_user, 1000)))
    state.feedback, state.event_sink, state.start_kafka = feedback, event_sink, start_kafka
    state.kafka = Clients(kafka=None, early_task=None)

    item_view = FeedbackView(lambda: store.current, metrics)  # item feedback analysis: gauges (read when scraped), dashboard
    extra: list[tuple[list[BaseRoute], str]] = [
        (dashboard.routes(settings, registry, feedback=item_view.summary), "dashboard"),
        (try_page.routes(settings, functools.partial(recommend, state), catalog, feedback, try_writes=try_writes,
                         read_ok=read_ok), "try"),
        (feedback_routes(lambda: store.current, read_ok), "item_feedback"),
    ]
    for routes, name in extra:
        app.router.routes.extend(routes)
        names.update({endpoint: name for r in routes if (endpoint := getattr(r, "endpoint", None)) is not None})
    return app
