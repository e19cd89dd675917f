"""Predictions: serve, batch, feedback, and the prediction log."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, HTTPException, Response, status
from pydantic import BaseModel

from service.api.dependencies import ContainerDep, PredictionsDep
from service.api.responses import BODY, DATABASE, WRITE, errors
from service.api.schemas import (
    BatchPredictionOut,
    BatchPredictRequest,
    FeedbackRequest,
    PredictionOut,
    PredictionRecord,
    PredictRequest,
)
from service.api.security import WriterDep
from service.api.strict_json import StrictJSONRoute
from service.serving.predictions import PredictionResult

router = APIRouter(tags=["predictions"], route_class=StrictJSONRoute)

PREDICT_ERRORS = errors(
    *BODY,
    404,
    409,
    *DATABASE,
    d404="Unknown symbol; the body lists the known ones.",
    d503="No model loaded yet, the prediction log is full (the database has been unreachable for "
    "long), a feature computation needs the database, or the service is shutting down; nothing "
    "was recorded. Retry after the number of seconds in Retry-After.",
)


def _out(result: PredictionResult) -> PredictionOut:
    return PredictionOut.model_validate(result, from_attributes=True)


def _json(body: BaseModel) -> Response:
    """The body serialised once, by pydantic: a Response is sent as is, where a returned model would
    be validated against `response_model` again and serialised by FastAPI (the schema stays in
    the OpenAPI document through `response_model`)."""
    return Response(body.model_dump_json(), media_type="application/json")


@router.post("/predict", operation_id="predict", responses=PREDICT_ERRORS, response_model=PredictionOut)
async def predict(body: PredictRequest, predictions: PredictionsDep) -> Response:
    """Direction of the symbol's next bar, with the probability of that direction."""
    (result,) = await predictions.predict_many_async([body.symbol])
    return _json(_out(result))


@router.post(
    "/predict/batch",
    operation_id="predict_batch",
    responses=PREDICT_ERRORS,
    response_model=BatchPredictionOut,
)
async def predict_batch(body: BatchPredictRequest, container: ContainerDep) -> Response:
    """Predictions for several symbols, all or nothing: every symbol is checked before any is
    served, and the rows are logged together once all are computed."""
    limit = container.settings.MAX_BATCH_SYMBOLS
    if len(body.symbols) > limit:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE, f"{len(body.symbols)} symbols in one batch; at most {limit}"
        )
    results = await container.predictions.predict_many_async(body.symbols)
    return _json(BatchPredictionOut(predictions=[_out(result) for result in results]))


@router.post(
    "/feedback",
    operation_id="record_feedback",
    dependencies=[WriterDep],
    responses=errors(
        *BODY,
        *WRITE,
        404,
        409,
        *DATABASE,
        d404="No prediction with this id.",
        d409="The prediction was already resolved with the other direction.",
    ),
)
def record_feedback(body: FeedbackRequest, predictions: PredictionsDep) -> PredictionRecord:
    """Record the realised direction of a prediction explicitly."""
    record = predictions.record_feedback(str(body.prediction_id), body.actual_direction)
    return PredictionRecord.model_validate(record)


@router.get(
    "/predictions/{prediction_id}",
    operation_id="get_prediction",
    responses=errors(404, 422, *DATABASE, d404="No prediction with this id."),
)
def get_prediction(prediction_id: UUID, predictions: PredictionsDep) -> PredictionRecord:
    """A logged prediction with its trace id and, once known, its outcome."""
    return PredictionRecord.model_validate(predictions.get(str(prediction_id)))
