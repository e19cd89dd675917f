"""Request and response bodies. Validation here is the first line against bad input."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from service.config import SYMBOL_PATTERN
from service.market.validation import validate_bar
from service.storage.market_bars import BarIn
from service.storage.tables import as_utc


def normalise_symbol(value: str) -> str:
    symbol = value.strip().upper()
    if not SYMBOL_PATTERN.match(symbol):
        raise ValueError(f"{value!r} is not a ticker symbol (letters, digits, '.', '-'; at most 10)")
    return symbol


Symbol = Annotated[
    str,
    Field(min_length=1, max_length=12, examples=["AAPL"], description="Ticker; case-insensitive."),
    AfterValidator(normalise_symbol),
]


class Bar(BaseModel):
    model_config = ConfigDict(extra="forbid")

    symbol: Symbol
    timestamp: datetime = Field(description="Bar close time, ISO 8601; naive times are UTC.")
    open: float = Field(gt=0)
    high: float = Field(gt=0)
    low: float = Field(gt=0)
    close: float = Field(gt=0)
    volume: float = Field(ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> Bar:
        """The same rules as CSV imports and the CLI (market_data.validate_bar)."""
        problems = validate_bar(self.to_bar_in())
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def to_bar_in(self) -> BarIn:
        return BarIn(
            self.symbol, as_utc(self.timestamp), self.open, self.high, self.low, self.close, self.volume
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
            volume=bar.volume,
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

    symbols: list[Symbol] = Field(min_length=1)

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


class ErrorOut(BaseModel):
    detail: Any
