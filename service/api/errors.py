"""Error answers: every domain error becomes a clear 4xx or 503 with a message, never a 500.

The body is always `ErrorOut` (`{"detail": <message>, ...}`); extra keys (known symbols,
problems, the unusable feature and bar) say more. Callers get messages written for them;
exception internals (driver messages, URLs, stack traces) go to the logs and the span only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from opentelemetry import trace
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.dependencies import get_container
from service.api.responses import RETRY_AFTER_SECONDS
from service.market.ingestion import InvalidBatchError
from service.model.features import InsufficientHistoryError, UnusableFeaturesError
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
MAX_PROBLEMS = 100


def error_response(
    status_code: int, detail: str, *, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {"detail": detail, **{key: value for key, value in extra.items() if value is not None}}
    return JSONResponse(body, status_code=status_code, headers=headers)


def unavailable(detail: str) -> JSONResponse:
    return error_response(
        status.HTTP_503_SERVICE_UNAVAILABLE, detail, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
    )


def _record_on_span(error: BaseException) -> None:
    span = trace.get_current_span()
    if span.is_recording():
        span.record_exception(error)


def add_error_handlers(app: FastAPI) -> None:
    """Map domain errors to clear 4xx/503 answers; nothing a client sends should produce a 500."""

    @app.exception_handler(UnknownSymbolError)
    async def unknown_symbol(_: Request, error: UnknownSymbolError) -> JSONResponse:
        return error_response(status.HTTP_404_NOT_FOUND, str(error), known_symbols=list(error.known))

    @app.exception_handler(PredictionNotFoundError)
    async def not_found(_: Request, error: PredictionNotFoundError) -> JSONResponse:
        return error_response(status.HTTP_404_NOT_FOUND, str(error))

    @app.exception_handler(UnusableFeaturesError)
    async def unusable_features(_: Request, error: UnusableFeaturesError) -> JSONResponse:
        log.warning(
            "unusable features",
            extra={"symbol": error.symbol, "feature": error.feature, "bar": str(error.bar)},
        )
        return error_response(
            status.HTTP_409_CONFLICT, str(error), feature=error.feature, bar=error.bar.isoformat()
        )

    @app.exception_handler(InsufficientHistoryError)
    async def no_history(_: Request, error: InsufficientHistoryError) -> JSONResponse:
        return error_response(status.HTTP_409_CONFLICT, f"not enough market data: {error}")

    @app.exception_handler(ConflictingFeedbackError)
    async def conflicting(_: Request, error: ConflictingFeedbackError) -> JSONResponse:
        return error_response(status.HTTP_409_CONFLICT, str(error))

    @app.exception_handler(InvalidBatchError)
    async def invalid_batch(_: Request, error: InvalidBatchError) -> JSONResponse:
        problems = [{"location": "body.bars", "message": problem} for problem in error.problems]
        return error_response(
            status.HTTP_422_UNPROCESSABLE_CONTENT, str(error), problems=problems[:MAX_PROBLEMS]
        )

    @app.exception_handler(ModelUnavailableError)
    async def no_model(_: Request, error: ModelUnavailableError) -> JSONResponse:
        return unavailable(str(error))

    @app.exception_handler(PredictionLogFullError)
    async def log_full(_: Request, error: PredictionLogFullError) -> JSONResponse:
        retry = {"Retry-After": str(LOG_FULL_RETRY_AFTER_SECONDS)}
        return error_response(status.HTTP_503_SERVICE_UNAVAILABLE, str(error), headers=retry)

    @app.exception_handler(PredictionLogClosedError)
    async def shutting_down(_: Request, error: PredictionLogClosedError) -> JSONResponse:
        return error_response(status.HTTP_503_SERVICE_UNAVAILABLE, str(error), headers={"Retry-After": "1"})

    async def database_unavailable(request: Request, error: Exception) -> JSONResponse:
        _record_on_span(error)
        log.error(
            "database unavailable",
            extra={"path": request.url.path, "error": type(error).__name__, "reason": _reason(error)},
        )
        return unavailable("database unavailable; nothing was written")

    for database_error in (OperationalError, InterfaceError, PoolTimeoutError):
        # PoolTimeoutError: every pooled connection is busy (pool exhaustion), a load condition.
        app.add_exception_handler(database_error, database_unavailable)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        if request.url.path.rstrip("/") in PREDICTION_PATHS:
            get_container(request).telemetry.metrics.prediction_errors.add(1, {"reason": "invalid_input"})
        problems = [
            {"location": ".".join(str(p) for p in e.get("loc", ())), "message": _message(e)}
            for e in error.errors()
        ]
        if any(e.get("type") == "json_invalid" for e in error.errors()):
            summary = "; ".join(p["message"] for p in problems[:3])
            return error_response(
                status.HTTP_400_BAD_REQUEST, f"request body is not valid JSON: {summary}", problems=problems
            )
        summary = "; ".join(f"{p['location']}: {p['message']}" for p in problems[:10])
        return error_response(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"invalid request: {summary}",
            problems=problems[:MAX_PROBLEMS],
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return error_response(error.status_code, str(error.detail), headers=error.headers)

    @app.exception_handler(Exception)
    async def internal(request: Request, error: Exception) -> JSONResponse:
        _record_on_span(error)
        log.exception("unhandled error", extra={"path": request.url.path})
        return error_response(status.HTTP_500_INTERNAL_SERVER_ERROR, "internal error; see the service logs")


def _message(error: Any) -> str:
    """pydantic's message, with the JSON parser's reason where there is one."""
    message = str(error.get("msg", ""))
    reason = (error.get("ctx") or {}).get("error")
    return f"{message}: {reason}" if error.get("type") == "json_invalid" and reason else message


def _reason(error: Exception) -> str:
    """The driver's first line, for the log only (it may name hosts, never a password)."""
    origin = getattr(error, "orig", None) or error
    return str(origin).splitlines()[0][:200] if str(origin) else type(origin).__name__
