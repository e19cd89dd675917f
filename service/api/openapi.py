"""The OpenAPI document, made to describe exactly what this app answers.

FastAPI builds it from the routes; two things only the settings know are added here: the bounds
of a bar (MAX_PRICE, MAX_VOLUME) and the batch sizes (MAX_BATCH_BARS, MAX_BATCH_SYMBOLS), so a
client generated from `/openapi.json` refuses what the service would refuse. FastAPI's default
`HTTPValidationError` never appears: every route declares its 422 as `ErrorOut` (responses.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from service.config import Settings
from service.market.validation import PRICE_FIELDS


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Replace `app.openapi` with one that adds the configured bounds (built once, then cached)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            add_bounds(FastAPI.openapi(app), settings)  # FastAPI's own, cached in app.openapi_schema
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def add_bounds(document: dict[str, Any], settings: Settings) -> None:
    schemas = document["components"]["schemas"]
    bar = schemas["Bar"]["properties"]
    for name in PRICE_FIELDS:
        bar[name]["maximum"] = settings.MAX_PRICE
    bar["volume"]["maximum"] = settings.MAX_VOLUME
    schemas["MarketDataBatch"]["properties"]["bars"]["maxItems"] = settings.MAX_BATCH_BARS
    schemas["BatchPredictRequest"]["properties"]["symbols"]["maxItems"] = settings.MAX_BATCH_SYMBOLS
