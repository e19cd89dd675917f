"""Serving predictions and learning their outcomes.

`PredictionService.predict` looks up features, asks the served model, hands the prediction (with
the id of the trace that made it) to the prediction log, which returns once the row is durable,
and records the prediction metrics. Outcomes arrive later: when newer bars are ingested
(`resolve_due`) or through explicit feedback (`record_feedback`). A prediction can be read back
(and given feedback) while the log still holds it in its local spool.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Literal

from opentelemetry import trace

from service.model.features import InsufficientHistoryError
from service.model.manager import ModelManager
from service.model.served_model import ServedModel
from service.serving.feature_store import FeatureStore, Lookup
from service.serving.inference import InferenceCache
from service.storage.database import Database
from service.storage.prediction_log.log import (
    PredictionLog,
    PredictionLogClosedError,
    PredictionLogFullError,
    SpooledPrediction,
)
from service.storage.prediction_log.records import LoggedFeedback, LoggedPrediction
from service.storage.prediction_rows import (
    get_prediction,
    new_prediction_id,
    resolve_by_feedback,
    resolve_due_predictions,
)
from service.storage.tables import PENDING, RESOLVED, Prediction
from service.telemetry.providers import Telemetry

log = logging.getLogger(__name__)

Direction = Literal["up", "down"]
RESOLVE_FLUSH_SECONDS = 2.0


class UnknownSymbolError(LookupError):
    def __init__(self, symbols: list[str], known: tuple[str, ...]) -> None:
        self.symbols = symbols
        self.known = known
        super().__init__(f"Unknown symbol(s) {', '.join(symbols)}. Known symbols: {', '.join(known)}")


class ModelUnavailableError(RuntimeError):
    """No model is loaded (or it cannot use the current features)."""


class PredictionNotFoundError(LookupError):
    pass


class ConflictingFeedbackError(ValueError):
    pass


@dataclass(frozen=True)
class PredictionResult:
    prediction_id: str
    symbol: str
    direction: Direction
    confidence: float
    probability_up: float
    model_name: str
    model_version: str
    feature_set: str
    feature_set_version: str
    as_of: datetime
    served_from: str
    trace_id: str | None
    created_at: datetime
    features: dict[str, float]


ServedListener = Callable[[PredictionResult, ServedModel], None]
"""Called after each successful prediction (the drift monitor keeps a window of served features)."""


class PredictionService:
    def __init__(
        self,
        *,
        database: Database,
        feature_store: FeatureStore,
        models: ModelManager,
        prediction_log: PredictionLog,
        telemetry: Telemetry,
        on_served: Sequence[ServedListener] = (),
    ) -> None:
        self._database = database
        self._log = prediction_log
        self._features = feature_store
        self._models = models
        self._telemetry = telemetry
        self._listeners = tuple(on_served)
        self._inference = InferenceCache()

    def known_symbols(self) -> tuple[str, ...]:
        model = self._models.current
        return model.symbols if model is not None else ()

    def require_known(self, symbols: list[str]) -> ServedModel:
        """The served model, after checking every symbol is one it was trained on.

        Runs before anything is recorded, so user input never becomes a metric label.
        """
        model = self._models.current
        if model is None:
            self._telemetry.metrics.prediction_errors.add(1, {"reason": "model_unavailable"})
            raise ModelUnavailableError("no model is loaded yet; see /health")
        unknown = [symbol for symbol in symbols if symbol not in model.symbols]
        if unknown:
            self._telemetry.metrics.prediction_errors.add(1, {"reason": "unknown_symbol"})
            raise UnknownSymbolError(unknown, model.symbols)
        return model

    def predict(self, symbol: str, *, model: ServedModel | None = None) -> PredictionResult:
        return self.predict_many([symbol], model=model)[0]

    def predict_many(
        self, symbols: Sequence[str], *, model: ServedModel | None = None
    ) -> list[PredictionResult]:
        """Predict every symbol, then log all rows as one durable record: all or nothing.

        The answer exists only once its rows are in the prediction log's spool; any failure
        before that leaves no row behind. (The API uses `predict_many_async`, the same steps.)
        """
        model = model or self.require_known(list(symbols))
        results: list[PredictionResult] = []
        started: list[float] = []
        for symbol in symbols:
            started.append(time.perf_counter())
            try:
                results.append(self._answer(symbol, model, self._features.get(symbol)))
            except Exception as error:
                self._record_failure(symbol, model, started[-1], _failure_reason(error))
                raise
        try:
            self._log.append([_logged(result) for result in results])
        except Exception as error:
            self._record_failures(results, started, model, error)
            raise
        self._record_successes(results, started, model)
        return results

    async def predict_many_async(
        self, symbols: Sequence[str], *, model: ServedModel | None = None
    ) -> list[PredictionResult]:
        """`predict_many` for the event loop: nothing that can block runs on it.

        An L1 hit and a reused model answer are a few dictionary lookups, done inline; a Redis or
        database lookup goes to a worker thread; the wait for the spool's fsync is awaited.
        """
        model = model or self.require_known(list(symbols))
        results: list[PredictionResult] = []
        started: list[float] = []
        for symbol in symbols:
            started.append(time.perf_counter())
            try:
                lookup = self._features.get_local(symbol)
                if lookup is None:  # Redis or the database: a worker thread waits for it
                    lookup = await asyncio.to_thread(self._features.get, symbol)
                results.append(self._answer(symbol, model, lookup))
            except Exception as error:
                self._record_failure(symbol, model, started[-1], _failure_reason(error))
                raise
        try:
            await asyncio.wrap_future(self._log.submit([_logged(result) for result in results]))
        except Exception as error:
            self._record_failures(results, started, model, error)
            raise
        self._record_successes(results, started, model)
        return results

    def _record_successes(
        self, results: Sequence[PredictionResult], started: Sequence[float], model: ServedModel
    ) -> None:
        finished = time.perf_counter()
        metrics = self._telemetry.metrics
        for result, began in zip(results, started, strict=True):
            labels = {"symbol": result.symbol, "model_version": model.version}
            metrics.predictions.add(1, labels)
            metrics.prediction_confidence.record(result.confidence, labels)
            metrics.prediction_duration.record(finished - began, {**labels, "outcome": "success"})
            for listener in self._listeners:
                listener(result, model)

    def _record_failures(
        self,
        results: Sequence[PredictionResult],
        started: Sequence[float],
        model: ServedModel,
        error: Exception,
    ) -> None:
        for result, began in zip(results, started, strict=True):
            self._record_failure(result.symbol, model, began, _failure_reason(error))

    def _answer(self, symbol: str, model: ServedModel, lookup: Lookup) -> PredictionResult:
        """The prediction for these features: the model's answer, reused while nothing changed."""
        vector = lookup.vector
        if vector.names != model.feature_names:
            raise ModelUnavailableError(
                f"model {model.version} expects features {model.feature_names}; "
                f"the store serves {vector.names}"
            )
        answer = self._inference.answer(vector, model, self._telemetry.tracer)
        return PredictionResult(
            prediction_id=new_prediction_id(),
            symbol=symbol,
            direction=answer.direction,
            confidence=answer.confidence,
            probability_up=answer.probability_up,
            model_name=model.name,
            model_version=model.version,
            feature_set=vector.feature_set,
            feature_set_version=vector.version,
            as_of=vector.last_bar,
            served_from=lookup.level,
            trace_id=current_trace_id(),
            created_at=datetime.now(UTC),
            features=answer.features,
        )

    def _record_failure(self, symbol: str, model: ServedModel, started: float, reason: str) -> None:
        metrics = self._telemetry.metrics
        labels = {"symbol": symbol, "model_version": model.version, "outcome": "error"}
        metrics.prediction_errors.add(1, {"reason": reason})
        metrics.prediction_duration.record(time.perf_counter() - started, labels)

    # --- outcomes --------------------------------------------------------------------------------

    def flush_log(self) -> bool:
        """Give rows this process still spools a moment (RESOLVE_FLUSH_SECONDS) to reach the database.

        Ingestion calls it before storing bars, so that the bars resolve those rows in the same call;
        rows it misses (another worker's, or all while the database lags) are resolved by the
        prediction log's writer as they land.
        """
        return self._log.flush(timeout=RESOLVE_FLUSH_SECONDS)

    def resolve_due(self, symbols: list[str]) -> int:
        """Resolve pending predictions of these symbols whose next bar is now stored."""
        with self._database.session() as session:
            return resolve_due_predictions(session, symbols=symbols, now=datetime.now(UTC))

    def record_feedback(self, prediction_id: str, actual_direction: Direction) -> PredictionView:
        """Record a realised outcome explicitly; repeating the same outcome is harmless.

        A prediction still in the prediction log's spool gets its feedback spooled after it.
        """
        spooled = self._log.find(prediction_id)
        if spooled is None and (elsewhere := self._log.find_elsewhere(prediction_id)) is not None:
            spooled = SpooledPrediction(elsewhere, None)
        if spooled is not None:
            return self._spool_feedback(spooled, actual_direction)
        with self._database.session() as session:
            now = datetime.now(UTC)
            if resolve_by_feedback(session, prediction_id=prediction_id, actual=actual_direction, now=now):
                row = get_prediction(session, prediction_id=prediction_id)
                assert row is not None
                return PredictionView.from_row(row)
            row = get_prediction(session, prediction_id=prediction_id)
            if row is None:
                raise PredictionNotFoundError(f"no prediction with id {prediction_id}")
            if row.actual_direction != actual_direction:
                raise ConflictingFeedbackError(
                    f"prediction {prediction_id} was already resolved as {row.actual_direction!r}"
                )
            return PredictionView.from_row(row)

    def _spool_feedback(self, spooled: SpooledPrediction, actual: Direction) -> PredictionView:
        previous = spooled.feedback
        if previous is not None:
            if previous.actual_direction != actual:
                raise ConflictingFeedbackError(
                    f"prediction {spooled.row.id} was already resolved as {previous.actual_direction!r}"
                )
            return PredictionView.from_spool(spooled.row, previous)
        feedback = LoggedFeedback(spooled.row.id, actual, datetime.now(UTC), time.time())
        self._log.append_feedback(feedback)
        return PredictionView.from_spool(spooled.row, feedback)

    def get(self, prediction_id: str) -> PredictionView:
        """A prediction wherever it is now: this process's spool, the database, another spool."""
        spooled = self._log.find(prediction_id)
        if spooled is not None:
            return PredictionView.from_spool(spooled.row, spooled.feedback)
        with self._database.session() as session:
            row = get_prediction(session, prediction_id=prediction_id)
            if row is not None:
                return PredictionView.from_row(row)
        elsewhere = self._log.find_elsewhere(prediction_id)
        if elsewhere is not None:
            return PredictionView.from_spool(elsewhere, None)
        raise PredictionNotFoundError(f"no prediction with id {prediction_id}")


@dataclass(frozen=True)
class PredictionView:
    """A logged prediction as callers see it, wherever it is stored right now."""

    id: str
    created_at: datetime
    symbol: str
    as_of: datetime
    direction: str
    confidence: float
    probability_up: float
    model_name: str
    model_version: str
    feature_set_version: str
    trace_id: str | None
    status: str
    actual_direction: str | None
    correct: bool | None
    resolved_at: datetime | None
    resolution_source: str | None
    stored_in: Literal["database", "spool"]

    @classmethod
    def from_row(cls, row: Prediction) -> PredictionView:
        return cls(
            id=row.id,
            created_at=row.created_at,
            symbol=row.symbol,
            as_of=row.as_of,
            direction=row.direction,
            confidence=row.confidence,
            probability_up=row.probability_up,
            model_name=row.model_name,
            model_version=row.model_version,
            feature_set_version=row.feature_set_version,
            trace_id=row.trace_id,
            status=row.status,
            actual_direction=row.actual_direction,
            correct=row.correct,
            resolved_at=row.resolved_at,
            resolution_source=row.resolution_source,
            stored_in="database",
        )

    @classmethod
    def from_spool(cls, row: LoggedPrediction, feedback: LoggedFeedback | None) -> PredictionView:
        resolved = feedback is not None
        return cls(
            **{name: getattr(row, name) for name in LOGGED_FIELDS},
            status=RESOLVED if resolved else PENDING,
            actual_direction=feedback.actual_direction if feedback else None,
            correct=(feedback.actual_direction == row.direction) if feedback else None,
            resolved_at=feedback.resolved_at if feedback else None,
            resolution_source="feedback" if resolved else None,
            stored_in="spool",
        )


LOGGED_FIELDS = tuple(f.name for f in fields(LoggedPrediction))


def _logged(result: PredictionResult) -> LoggedPrediction:
    return LoggedPrediction(
        id=result.prediction_id,
        created_at=result.created_at,
        symbol=result.symbol,
        as_of=result.as_of,
        direction=result.direction,
        confidence=result.confidence,
        probability_up=result.probability_up,
        model_name=result.model_name,
        model_version=result.model_version,
        feature_set_version=result.feature_set_version,
        trace_id=result.trace_id,
    )


def _failure_reason(error: BaseException) -> str:
    """The bounded `reason` label of prediction_errors_total for an exception."""
    if isinstance(error, InsufficientHistoryError):
        return "no_data"
    if isinstance(error, ModelUnavailableError):
        return "model_unavailable"
    if isinstance(error, PredictionLogFullError):
        return "log_full"
    if isinstance(error, PredictionLogClosedError):
        return "shutting_down"
    return "internal"


def current_trace_id() -> str | None:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None
