"""``reco`` commands contributed by the serving package: ``reco serve`` (its benchmarks and the
whole-loop tools register themselves: ``serving/bench/``, ``serving/ops/``)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from serving.settings import ServingSettings
from streamproc.runtime import client_settings

log = logging.getLogger("reco.serve")


def _cmd_serve(args: argparse.Namespace, settings: ServingSettings) -> int:
    import uvicorn

    from serving.app import create_app
    from serving.catalog import Catalog

    settings = client_settings(settings)
    catalog = Catalog.load(args.catalog) if args.catalog else None  # a bad file: one line, before anything starts
    # Models are built on the update thread; a 1 ms GIL switch interval (default 5 ms) bounds how
    # long a build can hold up the event loop between two requests.
    sys.setswitchinterval(0.001)
    host = args.host or settings.http_host
    port = settings.http_port if args.port is None else args.port
    if not settings.api_key and not settings.auth_disabled:
        log.warning("RECO_API_KEY is empty: POST /v1/events is refused")
    log.info("serving on http://%s:%s (Kafka %s, topics %s*)", host, port, settings.kafka_bootstrap, settings.topic_prefix)
    config = uvicorn.Config(create_app(settings, catalog=catalog, try_writes=args.try_writes), host=host, port=port, log_level="warning", access_log=False,
                            lifespan="on", timeout_graceful_shutdown=10, http=args.http)
    # uvicorn handles SIGINT/SIGTERM: stops accepting, finishes in-flight requests, runs the
    # lifespan shutdown (Kafka clients), then re-raises the signal; these handlers turn that
    # re-raise into a clean exit status 0.
    stopped: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stopped.append(signum))
    uvicorn.Server(config).run()
    log.info("serving stopped%s", f" on signal {stopped[0]}" if stopped else "")
    return 0


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add this package's commands to ``reco``."""
    p = commands.add_parser("serve", help="HTTP + Kafka recommendation API with hot model swaps")
    p.add_argument("--host", default=None, help="bind address (default RECO_HTTP_HOST)")
    p.add_argument("--port", type=int, default=None, help="port (default RECO_HTTP_PORT)")
    p.add_argument("--http", default="auto", choices=["auto", "h11", "httptools"], help="uvicorn HTTP implementation")
    p.add_argument("--catalog", metavar="FILE", help="JSON of item titles and categories for the /try page (reco demo writes one)")
    p.add_argument("--try-writes", action="store_true",
                   help="hand the API key to the /try page's own script (same origin only), so it can post events: for demos")
    p.set_defaults(func=_cmd_serve)
