"""Market data ingestion."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from service.api.dependencies import ContainerDep
from service.api.schemas import ErrorOut, IngestResponse, MarketDataBatch
from service.market.ingestion import ingest

router = APIRouter(tags=["market data"])


@router.post(
    "/market-data",
    operation_id="ingest_market_data",
    responses={413: {"model": ErrorOut}, 422: {"model": ErrorOut}},
)
def ingest_market_data(batch: MarketDataBatch, container: ContainerDep) -> IngestResponse:
    """Store a batch of bars atomically; re-sending a bar replaces it (idempotent on symbol+timestamp).

    New bars invalidate the symbols' cached features and resolve predictions they decide.
    """
    limit = container.settings.MAX_BATCH_BARS
    if len(batch.bars) > limit:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE, f"{len(batch.bars)} bars in one batch; at most {limit}"
        )
    result = ingest(
        [bar.to_bar_in() for bar in batch.bars],
        database=container.database,
        feature_store=container.feature_store,
        predictions=container.predictions,
    )
    return IngestResponse(**result.__dict__)
