"""The FastAPI app: built here, wired in the lifespan, routes in `routers/`.

FastAPI (0.142+) carries its own OpenTelemetry support; it is handed this app's providers and is
the one HTTP instrumentation used (contrib's ASGI middleware is deliberately not added: FastAPI
switches its own off when it sees it, and running both would double every span).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from service import __version__
from service.api.body_limit import BodyLimitMiddleware
from service.api.errors import add_error_handlers
from service.api.openapi import install_openapi
from service.api.routers import feature_store, market_data, models, operations, predictions
from service.api.security import log_write_policy
from service.config import Settings, get_settings
from service.container import bootstrap, build_container
from service.telemetry.logs import configure_logging
from service.telemetry.providers import Telemetry, setup_telemetry

log = logging.getLogger(__name__)

UNTRACED_PATHS = frozenset({"/metrics", "/health"})

DESCRIPTION = """
Stock-direction predictions per symbol, observable down to the single request.

Every prediction is logged with the trace id of the request that made it (`GET /predictions/{id}`)
and resolved against the realised next bar when it arrives (`POST /market-data`) or through
`POST /feedback`.
"""


def freeze_startup_objects() -> None:
    """Move everything alive after start-up out of the garbage collector's sight (`gc.freeze`).

    Start-up leaves hundreds of thousands of long-lived objects (the model, MLflow, SQLAlchemy,
    pydantic and OpenTelemetry machinery); every full collection walked all of them, a pause of
    100-200 ms measured under load, holding the GIL, which put those pauses into the p99. Frozen,
    they are never traversed again; only objects made while serving are. (Garbage is collected
    first, so none of it is kept for good.)
    """
    gc.collect()
    gc.freeze()


def create_app(settings: Settings | None = None, telemetry: Telemetry | None = None) -> FastAPI:
    """The app; tests pass their own settings and in-memory telemetry.

    Without settings this is uvicorn building the app in a server process: with `--workers N`
    each worker is a fresh process that never ran `stockpred serve`, so logging is set up here.
    """
    if settings is None:
        settings = get_settings()
        configure_logging(settings)
    owns_telemetry = telemetry is None
    telemetry = telemetry or setup_telemetry(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        container = build_container(settings, telemetry)
        try:
            bootstrap(container)
            log_write_policy(settings)
            container.health.check_now()
            container.start_background()
            app.state.container = container
            freeze_startup_objects()
            yield
        finally:
            container.close()
            if owns_telemetry:
                telemetry.shutdown()

    native = settings.HTTP_INSTRUMENTATION == "native"
    app = FastAPI(
        title="Stock prediction service",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        telemetry={
            "tracer_provider": telemetry.tracer_provider,  # type: ignore[typeddict-item]
            "meter_provider": telemetry.meter_provider,  # type: ignore[typeddict-item]
            "tracing": native,
            "metrics": native,
            "operation_spans": False,  # our own spans mark the steps that matter; these cost CPU
            "logs": False,  # logs go through the logging module, with trace ids
            # Exporters are ours (setup_telemetry); FASTAPI_OTEL_AUTO_CONFIGURE must not add a second set.
            "auto_configure": False,
            "exclude": _untraced,
        },
    )
    if not native:
        _instrument_with_contrib(app, telemetry)
    for router in (
        predictions.router,
        market_data.router,
        feature_store.router,
        models.router,
        operations.router,
    ):
        app.include_router(router)
    add_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.MAX_BODY_BYTES)  # 413 before reading it
    install_openapi(app, settings)
    return app


def _instrument_with_contrib(app: FastAPI, telemetry: Telemetry) -> None:
    """opentelemetry-instrumentation-fastapi instead of FastAPI's own support (HTTP_INSTRUMENTATION).

    The same server span and `http.server.request.duration` (stable HTTP semantic conventions,
    opted into in service/telemetry/__init__.py), without its per-message receive/send spans.
    """
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
        excluded_urls=",".join(path.lstrip("/") for path in sorted(UNTRACED_PATHS)),
        exclude_spans=["receive", "send"],
    )


def _untraced(scope: MutableMapping[str, Any]) -> bool:
    return scope.get("path") in UNTRACED_PATHS
