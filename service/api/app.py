"""The FastAPI app: built here, wired in the lifespan, routes in `routers/`.

FastAPI (0.142+) carries its own OpenTelemetry support; it is handed this app's providers and is
the one HTTP instrumentation used (contrib's ASGI middleware is deliberately not added: FastAPI
switches its own off when it sees it, and running both would double every span).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

from service import __version__
from service.api.dependencies import get_container
from service.api.routers import feature_store, market_data, models, operations, predictions
from service.config import Settings, get_settings
from service.container import bootstrap, build_container
from service.features import InsufficientHistoryError
from service.ingestion import InvalidBatchError
from service.predictions import (
    ConflictingFeedbackError,
    ModelUnavailableError,
    PredictionNotFoundError,
    UnknownSymbolError,
)
from service.telemetry import Telemetry, setup_telemetry

log = logging.getLogger(__name__)

UNTRACED_PATHS = frozenset({"/metrics", "/health"})
PREDICTION_PATHS = frozenset({"/predict", "/predict/batch"})

DESCRIPTION = """
Stock-direction predictions per symbol, observable down to the single request.

Every prediction is logged with the trace id of the request that made it (`GET /predictions/{id}`)
and resolved against the realised next bar when it arrives (`POST /market-data`) or through
`POST /feedback`.
"""


def create_app(settings: Settings | None = None, telemetry: Telemetry | None = None) -> FastAPI:
    """The app; tests pass their own settings and in-memory telemetry."""
    settings = settings or get_settings()
    owns_telemetry = telemetry is None
    telemetry = telemetry or setup_telemetry(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        container = build_container(settings, telemetry)
        try:
            bootstrap(container)
            container.health.check_now()
            container.start_background()
            app.state.container = container
            yield
        finally:
            container.close()
            if owns_telemetry:
                telemetry.shutdown()

    app = FastAPI(
        title="Stock prediction service",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        telemetry={
            "tracer_provider": telemetry.tracer_provider,  # type: ignore[typeddict-item]
            "meter_provider": telemetry.meter_provider,  # type: ignore[typeddict-item]
            "operation_spans": False,  # our own spans mark the steps that matter; these cost CPU
            "logs": False,  # logs go through the logging module, with trace ids
            # Exporters are ours (setup_telemetry); FASTAPI_OTEL_AUTO_CONFIGURE must not add a second set.
            "auto_configure": False,
            "exclude": _untraced,
        },
    )
    for router in (
        predictions.router,
        market_data.router,
        feature_store.router,
        models.router,
        operations.router,
    ):
        app.include_router(router)
    _add_error_handlers(app)
    return app


def _untraced(scope: MutableMapping[str, Any]) -> bool:
    return scope.get("path") in UNTRACED_PATHS


def _error(status_code: int, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status_code)


def _add_error_handlers(app: FastAPI) -> None:
    """Map domain errors to clear 4xx/503 answers; nothing a client sends should produce a 500."""

    @app.exception_handler(UnknownSymbolError)
    async def unknown_symbol(_: Request, error: UnknownSymbolError) -> JSONResponse:
        return _error(status.HTTP_404_NOT_FOUND, str(error), known_symbols=list(error.known))

    @app.exception_handler(PredictionNotFoundError)
    async def not_found(_: Request, error: PredictionNotFoundError) -> JSONResponse:
        return _error(status.HTTP_404_NOT_FOUND, str(error))

    @app.exception_handler(InsufficientHistoryError)
    async def no_history(_: Request, error: InsufficientHistoryError) -> JSONResponse:
        return _error(status.HTTP_409_CONFLICT, f"not enough market data: {error}")

    @app.exception_handler(ConflictingFeedbackError)
    async def conflicting(_: Request, error: ConflictingFeedbackError) -> JSONResponse:
        return _error(status.HTTP_409_CONFLICT, str(error))

    @app.exception_handler(InvalidBatchError)
    async def invalid_batch(_: Request, error: InvalidBatchError) -> JSONResponse:
        return _error(status.HTTP_422_UNPROCESSABLE_CONTENT, str(error), problems=error.problems[:100])

    @app.exception_handler(ModelUnavailableError)
    async def no_model(_: Request, error: ModelUnavailableError) -> JSONResponse:
        return _error(status.HTTP_503_SERVICE_UNAVAILABLE, str(error))

    @app.exception_handler(OperationalError)
    async def database_down(request: Request, error: OperationalError) -> JSONResponse:
        log.error("database unavailable", extra={"path": request.url.path, "error": str(error.orig)[:200]})
        return _error(status.HTTP_503_SERVICE_UNAVAILABLE, "database unavailable; nothing was written")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        if request.url.path.rstrip("/") in PREDICTION_PATHS:
            get_container(request).telemetry.metrics.prediction_errors.add(1, {"reason": "invalid_input"})
        problems = [
            {"location": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")}
            for e in error.errors()
        ]
        summary = "; ".join(f"{p['location']}: {p['message']}" for p in problems[:10])
        return _error(status.HTTP_422_UNPROCESSABLE_CONTENT, f"invalid request: {summary}", problems=problems)
