"""Market data ingestion."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from service.api.dependencies import ContainerDep
from service.api.responses import BODY, DATABASE, WRITE, errors
from service.api.schemas import IngestResponse, MarketDataBatch
from service.api.security import WriterDep
from service.api.strict_json import StrictJSONRoute
from service.container import ingest_bars

router = APIRouter(tags=["market data"], route_class=StrictJSONRoute)


@router.post(
    "/market-data",
    operation_id="ingest_market_data",
    dependencies=[WriterDep],
    responses=errors(*BODY, *WRITE, *DATABASE),
)
def ingest_market_data(batch: MarketDataBatch, container: ContainerDep) -> IngestResponse:
    """Store a batch of bars atomically; re-sending a bar replaces it (idempotent on symbol+timestamp).

    New bars invalidate the symbols' cached features and resolve predictions they decide.
    Every bar obeys the rules in the schema, and these that a schema cannot state: high is the
    highest and low the lowest of the four prices, and the timestamp is not in the future (beyond
    MAX_FUTURE_SKEW_SECONDS); a batch that breaks any of them is refused whole (422).
    """
    limit = container.settings.MAX_BATCH_BARS
    if len(batch.bars) > limit:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE, f"{len(batch.bars)} bars in one batch; at most {limit}"
        )
    result = ingest_bars(container, [bar.to_bar_in() for bar in batch.bars])
    return IngestResponse(**result.__dict__)
