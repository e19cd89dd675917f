"""Error answers: every domain error becomes a clear 4xx or 503 with a message, never a 500.

The body is always `{"detail": <message>, ...}`; extra keys (known symbols, problems) say more.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

from service.api.dependencies import get_container
from service.market.ingestion import InvalidBatchError
from service.model.features import InsufficientHistoryError
from service.serving.predictions import (
    ConflictingFeedbackError,
    ModelUnavailableError,
    PredictionNotFoundError,
    UnknownSymbolError,
)
from service.storage.prediction_log.log import PredictionLogClosedError, PredictionLogFullError

log = logging.getLogger(__name__)

PREDICTION_PATHS = frozenset({"/predict", "/predict/batch"})
# A full prediction log empties at the database's pace once it is back; a minute is a fair wait.
LOG_FULL_RETRY_AFTER_SECONDS = 60


def _error(status_code: int, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status_code)


def add_error_handlers(app: FastAPI) -> None:
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

    @app.exception_handler(PredictionLogFullError)
    async def log_full(_: Request, error: PredictionLogFullError) -> JSONResponse:
        response = _error(status.HTTP_503_SERVICE_UNAVAILABLE, str(error))
        response.headers["Retry-After"] = str(LOG_FULL_RETRY_AFTER_SECONDS)
        return response

    @app.exception_handler(PredictionLogClosedError)
    async def shutting_down(_: Request, error: PredictionLogClosedError) -> JSONResponse:
        response = _error(status.HTTP_503_SERVICE_UNAVAILABLE, str(error))
        response.headers["Retry-After"] = "1"
        return response

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
