"""Request and response bodies. Validation here is the first line against bad input."""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from service.config import SYMBOL_PATTERN
from service.storage.market_bars import BarIn
from service.storage.tables import as_utc

# What a client may send as a symbol: a ticker in any case, optionally padded with spaces.
# The same text is the OpenAPI `pattern`; ASCII-only classes mean the same in ECMA-262 and Python.
SYMBOL_INPUT_PATTERN = r" *[A-Za-z][A-Za-z0-9.\-]{0,9} *"
_SYMBOL_INPUT = re.compile(SYMBOL_INPUT_PATTERN)


def normalise_symbol(value: str) -> str:
    if not _SYMBOL_INPUT.fullmatch(value):
        raise ValueError(f"{value!r} is not a ticker symbol (letters, digits, '.', '-'; at most 10)")
    symbol = value.strip().upper()
    assert SYMBOL_PATTERN.match(symbol)
    return symbol


Symbol = Annotated[
    str,
    Field(
        min_length=1,
        max_length=12,
        examples=["AAPL"],
        description="Ticker; case-insensitive, surrounding spaces ignored.",
        json_schema_extra={"pattern": f"^{SYMBOL_INPUT_PATTERN}$"},
    ),
    AfterValidator(normalise_symbol),
]

# Strict: a JSON integer is a number, `true` and "10.5" are not. Non-finite values (NaN,
# Infinity, 1e400) are refused here and, earlier, by the JSON parser (strict_json.py). The upper
# bounds come from the settings (MAX_PRICE, MAX_VOLUME): the OpenAPI document states them
# (openapi.py) and ingestion enforces them with every other bar rule (market/validation.py).
Price = Annotated[float, Field(gt=0, strict=True, allow_inf_nan=False)]


def whole_number(value: object) -> object:
    """A JSON integer, or a number with no fraction (JSON Schema's `integer`); never a bool."""
    if isinstance(value, bool):
        raise ValueError("volume must be a whole number, not a boolean")
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, int):
        return value
    raise ValueError("volume must be a whole number")


Volume = Annotated[int, Field(ge=0), BeforeValidator(whole_number)]

_ISO_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}:?\d{2})?")


def iso_date_time(value: object) -> object:
    """Only ISO 8601 text: pydantic would also take 0 or "1700000000" as Unix times.

    A datetime passes too: JSON never makes one, Python callers (`from_bar_in`) do.
    """
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _ISO_DATE_TIME.fullmatch(value):
        raise ValueError("timestamp must be an ISO 8601 date-time, e.g. 2024-03-01T21:00:00Z")
    return value


Timestamp = Annotated[
    datetime,
    Field(
        description="Bar close time, ISO 8601; naive times are UTC. At most MAX_FUTURE_SKEW_SECONDS "
        "(300 by default) ahead of the server's clock."
    ),
    BeforeValidator(iso_date_time),
]


class Bar(BaseModel):
    model_config = ConfigDict(extra="forbid")

    symbol: Symbol
    timestamp: Timestamp
    open: Price
    high: Price = Field(description="At least open, close and low.")
    low: Price = Field(description="At most open, close and high.")
    close: Price
    volume: Volume

    def to_bar_in(self) -> BarIn:
        return BarIn(
            self.symbol,
            as_utc(self.timestamp),
            self.open,
            self.high,
            self.low,
            self.close,
            float(self.volume),
        )

    @classmethod
    def from_bar_in(cls, bar: BarIn) -> Bar:
        """The request body form of a stored bar (tests and clients send bars this way)."""
        return cls(
            symbol=bar.symbol,
            timestamp=bar.ts,
            open=bar.open,
            high=bar.high,
            low=bar.low,
            close=bar.close,
            volume=int(bar.volume),
        )


class MarketDataBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bars: list[Bar] = Field(min_length=1, description="At most MAX_BATCH_BARS bars (5000 by default).")


class IngestResponse(BaseModel):
    inserted: int
    updated: int
    symbols: list[str]
    resolved_predictions: int


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    symbol: Symbol


class BatchPredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    symbols: list[Symbol] = Field(
        min_length=1,
        description="At most MAX_BATCH_SYMBOLS (50 by default); no symbol twice, in any case.",
        json_schema_extra={"uniqueItems": True},
    )

    @field_validator("symbols")
    @classmethod
    def _no_repeats(cls, symbols: list[str]) -> list[str]:
        if len(set(symbols)) != len(symbols):
            raise ValueError("symbols must not repeat")
        return symbols


class PredictionOut(BaseModel):
    prediction_id: str
    symbol: str
    direction: Literal["up", "down"]
    confidence: float = Field(description="Probability of the predicted direction (0.5..1).")
    probability_up: float
    model_name: str
    model_version: str
    feature_set: str
    feature_set_version: str
    as_of: datetime = Field(description="Close time of the newest bar the features used.")
    served_from: Literal["l1", "redis", "computed"]
    trace_id: str | None


class BatchPredictionOut(BaseModel):
    predictions: list[PredictionOut]


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prediction_id: UUID
    actual_direction: Literal["up", "down"]


class PredictionRecord(BaseModel):
    """A logged prediction, with its outcome once known."""

    model_config = ConfigDict(from_attributes=True)

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
    stored_in: Literal["database", "spool"] = Field(
        description="`spool` while the row waits in the local durable spool for the database."
    )


class ComponentOut(BaseModel):
    status: Literal["up", "degraded", "down", "disabled"]
    latency_ms: float | None
    detail: str | None


class HealthOut(BaseModel):
    status: Literal["ok", "degraded", "down"]
    checked_at: datetime
    components: dict[str, ComponentOut]


class ModelOut(BaseModel):
    name: str
    version: str
    alias: str
    source: Literal["registry", "cache"]
    feature_set_version: str
    feature_names: list[str]
    symbols: list[str]
    trained_at: str
    validation_accuracy: float
    feature_importances: dict[str, float]


class ModelVersionOut(BaseModel):
    version: str
    aliases: list[str]
    champion: bool
    served: bool
    validation_accuracy: float | None
    created_at_ms: int | None
    run_id: str | None
    status: str | None


class ModelsOut(BaseModel):
    name: str
    registry_reachable: bool
    served_version: str | None
    versions: list[ModelVersionOut]
    detail: str | None = None


class Problem(BaseModel):
    location: str = Field(description="Where in the request, e.g. `body.bars.0.close`.")
    message: str


class ErrorOut(BaseModel):
    """The body of every error answer (4xx and 503); optional keys say more where they apply."""

    detail: str = Field(description="What went wrong, in words.")
    problems: list[Problem] | None = Field(
        default=None, description="400 and 422: every problem found in the request."
    )
    known_symbols: list[str] | None = Field(default=None, description="404 for an unknown symbol.")
    feature: str | None = Field(default=None, description="409 for unusable features: which feature.")
    bar: datetime | None = Field(default=None, description="409 for unusable features: the bar to fix.")
