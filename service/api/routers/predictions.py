"""Predictions: serve, batch, feedback, and the prediction log."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from fastapi import APIRouter, HTTPException, status

from service.api.dependencies import ContainerDep, PredictionsDep
from service.api.schemas import (
    BatchPredictionOut,
    BatchPredictRequest,
    ErrorOut,
    FeedbackRequest,
    PredictionOut,
    PredictionRecord,
    PredictRequest,
)
from service.serving.predictions import PredictionResult

router = APIRouter(tags=["predictions"])

ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "Unknown symbol; the message lists the known ones."},
    409: {"model": ErrorOut, "description": "Not enough bars to compute features."},
    503: {
        "model": ErrorOut,
        "description": "No model loaded, the prediction log is full (the database has been "
        "unreachable for long), or the service is shutting down; nothing was recorded.",
    },
}


def _out(result: PredictionResult) -> PredictionOut:
    return PredictionOut.model_validate(result, from_attributes=True)


@router.post("/predict", operation_id="predict", responses=ERRORS)
def predict(body: PredictRequest, predictions: PredictionsDep) -> PredictionOut:
    """Direction of the symbol's next bar, with the probability of that direction."""
    return _out(predictions.predict(body.symbol))


@router.post("/predict/batch", operation_id="predict_batch", responses=ERRORS)
def predict_batch(body: BatchPredictRequest, container: ContainerDep) -> BatchPredictionOut:
    """Predictions for several symbols, all or nothing: every symbol is checked before any is
    served, and the rows are logged together once all are computed."""
    limit = container.settings.MAX_BATCH_SYMBOLS
    if len(body.symbols) > limit:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE, f"{len(body.symbols)} symbols in one batch; at most {limit}"
        )
    results = container.predictions.predict_many(body.symbols)
    return BatchPredictionOut(predictions=[_out(result) for result in results])


@router.post(
    "/feedback",
    operation_id="record_feedback",
    responses={
        404: {"model": ErrorOut},
        409: {"model": ErrorOut, "description": "Already resolved otherwise."},
    },
)
def record_feedback(body: FeedbackRequest, predictions: PredictionsDep) -> PredictionRecord:
    """Record the realised direction of a prediction explicitly."""
    record = predictions.record_feedback(str(body.prediction_id), body.actual_direction)
    return PredictionRecord.model_validate(record)


@router.get(
    "/predictions/{prediction_id}", operation_id="get_prediction", responses={404: {"model": ErrorOut}}
)
def get_prediction(prediction_id: UUID, predictions: PredictionsDep) -> PredictionRecord:
    """A logged prediction with its trace id and, once known, its outcome."""
    return PredictionRecord.model_validate(predictions.get(str(prediction_id)))
