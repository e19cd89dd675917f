"""Serving predictions and learning their outcomes.

`PredictionService.predict` looks up features, asks the served model, logs the prediction with
the id of the trace that made it, and records the prediction metrics. Outcomes arrive later: when
newer bars are ingested (`resolve_due`) or through explicit feedback (`record_feedback`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import numpy as np
from opentelemetry import trace

from service.model.features import InsufficientHistoryError
from service.model.manager import ModelManager
from service.model.served_model import ServedModel
from service.serving.feature_store import FeatureStore
from service.storage.database import Database
from service.storage.prediction_rows import (
    add_prediction,
    get_prediction,
    new_prediction_id,
    resolve_due_predictions,
)
from service.storage.tables import PENDING, RESOLVED, Prediction
from service.telemetry.providers import Telemetry

log = logging.getLogger(__name__)

Direction = Literal["up", "down"]


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
        telemetry: Telemetry,
        on_served: Sequence[ServedListener] = (),
    ) -> None:
        self._database = database
        self._features = feature_store
        self._models = models
        self._telemetry = telemetry
        self._listeners = tuple(on_served)

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
        model = model or self.require_known([symbol])
        started = time.perf_counter()
        labels = {"symbol": symbol, "model_version": model.version}
        metrics = self._telemetry.metrics
        try:
            result = self._predict(symbol, model)
        except InsufficientHistoryError:
            self._record_failure(labels, started, "no_data")
            raise
        except ModelUnavailableError:
            self._record_failure(labels, started, "model_unavailable")
            raise
        except Exception:
            self._record_failure(labels, started, "internal")
            raise
        metrics.predictions.add(1, labels)
        metrics.prediction_confidence.record(result.confidence, labels)
        metrics.prediction_duration.record(time.perf_counter() - started, {**labels, "outcome": "success"})
        for listener in self._listeners:
            listener(result, model)
        return result

    def _predict(self, symbol: str, model: ServedModel) -> PredictionResult:
        lookup = self._features.get(symbol)
        vector = lookup.vector
        if vector.names != model.feature_names:
            raise ModelUnavailableError(
                f"model {model.version} expects features {model.feature_names}; "
                f"the store serves {vector.names}"
            )
        with self._telemetry.tracer.start_as_current_span("model.inference") as span:
            probability_up = model.probability_up(np.asarray(vector.values))
            if span.is_recording():
                span.set_attribute("model.version", model.version)
                span.set_attribute("prediction.probability_up", probability_up)
        direction: Direction = "up" if probability_up >= 0.5 else "down"
        result = PredictionResult(
            prediction_id=new_prediction_id(),
            symbol=symbol,
            direction=direction,
            confidence=max(probability_up, 1 - probability_up),
            probability_up=probability_up,
            model_name=model.name,
            model_version=model.version,
            feature_set=vector.feature_set,
            feature_set_version=vector.version,
            as_of=vector.last_bar,
            served_from=lookup.level,
            trace_id=current_trace_id(),
            created_at=datetime.now(UTC),
            features=dict(zip(vector.names, vector.values, strict=True)),
        )
        with self._database.session() as session:
            add_prediction(session, _row(result))
        return result

    def _record_failure(self, labels: dict[str, str], started: float, reason: str) -> None:
        metrics = self._telemetry.metrics
        metrics.prediction_errors.add(1, {"reason": reason})
        metrics.prediction_duration.record(time.perf_counter() - started, {**labels, "outcome": "error"})

    # --- outcomes --------------------------------------------------------------------------------

    def resolve_due(self, symbols: list[str]) -> int:
        """Resolve pending predictions of these symbols whose next bar is now stored."""
        with self._database.session() as session:
            return resolve_due_predictions(session, symbols=symbols, now=datetime.now(UTC))

    def record_feedback(self, prediction_id: str, actual_direction: Direction) -> Prediction:
        """Record a realised outcome explicitly; repeating the same outcome is harmless."""
        with self._database.session() as session:
            row = get_prediction(session, prediction_id=prediction_id)
            if row is None:
                raise PredictionNotFoundError(f"no prediction with id {prediction_id}")
            if row.status == RESOLVED:
                if row.actual_direction != actual_direction:
                    raise ConflictingFeedbackError(
                        f"prediction {prediction_id} was already resolved as {row.actual_direction!r}"
                    )
                return row
            row.status = RESOLVED
            row.actual_direction = actual_direction
            row.correct = actual_direction == row.direction
            row.resolved_at = datetime.now(UTC)
            row.resolution_source = "feedback"
            return row

    def get(self, prediction_id: str) -> Prediction:
        with self._database.session() as session:
            row = get_prediction(session, prediction_id=prediction_id)
        if row is None:
            raise PredictionNotFoundError(f"no prediction with id {prediction_id}")
        return row


def current_trace_id() -> str | None:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def _row(result: PredictionResult) -> Prediction:
    return Prediction(
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
        status=PENDING,
    )
