"""Settings, read once from the environment (and an optional `.env` file).

Every value has an embedded default so that `make run` works on a fresh machine with no
external servers: SQLite for data, a SQLite-backed MLflow store, no Redis (L1 cache only).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

SYMBOL_PATTERN = re.compile(r"^[A-Z][A-Z0-9.\-]{0,9}$")


class Settings(BaseSettings):
    """Service configuration. Field names are the environment variable names."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=True)

    DATA_DIR: Path = Path("data")
    DATABASE_URL: str = ""  # empty: sqlite file under DATA_DIR
    REDIS_URL: str | None = None  # unset: L1 cache only
    MLFLOW_TRACKING_URI: str = ""  # empty: sqlite-backed store under DATA_DIR
    MLFLOW_ARTIFACT_ROOT: str = ""  # empty: DATA_DIR/mlartifacts
    MODEL_NAME: str = "stock-direction"
    MODEL_ALIAS: str = "champion"
    MODEL_POLL_SECONDS: float = Field(default=30.0, gt=0)
    SYMBOLS: Annotated[list[str], NoDecode] = ["AAPL", "MSFT", "GOOGL", "AMZN", "NVDA"]

    FEATURE_L1_TTL_SECONDS: float = Field(default=30.0, gt=0)
    FEATURE_REDIS_TTL_SECONDS: int = Field(default=300, gt=0)
    REDIS_TIMEOUT_SECONDS: float = Field(default=0.25, gt=0)
    REDIS_RETRY_AFTER_SECONDS: float = Field(default=1.0, ge=0)

    HEALTH_CHECK_INTERVAL_SECONDS: float = Field(default=5.0, gt=0)
    ACCURACY_WINDOW_PREDICTIONS: int = Field(default=200, gt=0)
    ACCURACY_WINDOW_HOURS: float = Field(default=24.0 * 30, gt=0)

    DRIFT_WINDOW_BARS: int = Field(default=250, ge=10)  # about a trading year of daily bars
    DRIFT_MIN_WINDOW: int = Field(default=100, ge=10)  # below this PSI is mostly sampling noise
    # Features whose window holds fewer independent samples than this are not scored (see drift.py).
    DRIFT_MIN_EFFECTIVE_SAMPLES: float = Field(default=50, gt=0)
    MONITOR_INTERVAL_SECONDS: float = Field(default=5.0, gt=0)

    # The prediction log's local spool (DATA_DIR/prediction-log): rows wait here, durable, for the
    # database. The bound decides how long a database outage can last before /predict answers
    # 503: about 330 bytes a row, so 64 MiB holds some 200,000 predictions.
    PREDICTION_LOG_MAX_BYTES: int = Field(default=64 * 1024 * 1024, ge=64 * 1024)
    PREDICTION_LOG_BATCH_ROWS: int = Field(default=128, gt=0, le=5000)  # rows per transaction
    PREDICTION_LOG_DEGRADED_AFTER_SECONDS: float = Field(default=10.0, gt=0)  # oldest row older: degraded
    SHUTDOWN_GRACE_SECONDS: float = Field(default=10.0, gt=0)  # SIGTERM: in-flight requests get this long
    SHUTDOWN_FLUSH_SECONDS: float = Field(default=5.0, ge=0)  # then one last try to empty the spool

    SEED: int = 42
    SEED_DAYS: int = Field(default=500, ge=80)
    BOOTSTRAP: bool = True  # migrate, seed an empty database, train when no champion exists
    # The synthetic market feed (service/market/feed.py): the next deterministic bar of every symbol
    # each period, so a demo resolves predictions and moves drift. `auto`: only while the database
    # holds the synthetic market (off on imported data).
    MARKET_FEED: Literal["auto", "on", "off"] = "auto"
    MARKET_FEED_INTERVAL_SECONDS: float = Field(default=5.0, gt=0)
    # Drift demonstration: this symbol's fed bars follow the shifted regime (unset: none).
    MARKET_FEED_SHIFT_SYMBOL: str | None = None
    MAX_BATCH_BARS: int = Field(default=5000, gt=0)
    MAX_BATCH_SYMBOLS: int = Field(default=50, gt=0)
    MAX_BODY_BYTES: int = Field(default=2 * 1024 * 1024, gt=0)  # 5000 bars are about 0.75 MB

    # Bounds every bar obeys (API, CSV import, synthetic market): far above any real quote, far
    # below what overflows a feature computation.
    MAX_PRICE: float = Field(default=1e6, gt=0, allow_inf_nan=False)
    MAX_VOLUME: int = Field(default=10**12, gt=0)
    MAX_FUTURE_SKEW_SECONDS: float = Field(default=300.0, ge=0, allow_inf_nan=False)

    # Writes (POST /market-data, POST /feedback) need this key in X-API-Key when it is set;
    # unset, only loopback clients may write.
    API_KEY: SecretStr | None = None

    DATABASE_POOL_SIZE: int = Field(default=10, gt=0)
    DATABASE_MAX_OVERFLOW: int = Field(default=10, ge=0)
    DATABASE_POOL_TIMEOUT_SECONDS: float = Field(default=5.0, gt=0)

    # Who makes the HTTP server span and metric: FastAPI's own OpenTelemetry support, or the contrib
    # package opentelemetry-instrumentation-fastapi. Both produce the contract of docs/telemetry.md;
    # README "Telemetry cost" has the measurement that chose the default.
    HTTP_INSTRUMENTATION: Literal["native", "contrib"] = "native"
    SERVICE_NAME: str = "prediction-api"
    DEPLOYMENT_ENVIRONMENT: str = "local"
    LOG_LEVEL: str = "INFO"
    LOG_JSON: bool = True

    @field_validator("SYMBOLS", mode="before")
    @classmethod
    def _split_symbols(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip().upper() for part in value.split(",") if part.strip()]
        return value

    @field_validator("SYMBOLS")
    @classmethod
    def _valid_symbols(cls, value: list[str]) -> list[str]:
        bad = [symbol for symbol in value if not SYMBOL_PATTERN.match(symbol)]
        if bad:
            raise ValueError(f"invalid symbols: {bad}")
        if not value:
            raise ValueError("SYMBOLS must name at least one symbol")
        return sorted(set(value))

    @field_validator("API_KEY")
    @classmethod
    def _no_blank_key(cls, value: SecretStr | None) -> SecretStr | None:
        """An empty API_KEY means "no key", not "the empty string is the key"."""
        return value if value is not None and value.get_secret_value().strip() else None

    @field_validator("MARKET_FEED_SHIFT_SYMBOL", mode="before")
    @classmethod
    def _shift_symbol(cls, value: object) -> object:
        if isinstance(value, str):
            return value.strip().upper() or None
        return value

    @model_validator(mode="after")
    def _shift_symbol_is_configured(self) -> Settings:
        if self.MARKET_FEED_SHIFT_SYMBOL and self.MARKET_FEED_SHIFT_SYMBOL not in self.SYMBOLS:
            shift = self.MARKET_FEED_SHIFT_SYMBOL
            raise ValueError(f"MARKET_FEED_SHIFT_SYMBOL={shift} is not one of SYMBOLS {self.SYMBOLS}")
        return self

    @model_validator(mode="after")
    def _derive_defaults(self) -> Settings:
        data_dir = self.DATA_DIR.resolve()
        if not self.DATABASE_URL:
            self.DATABASE_URL = f"sqlite:///{data_dir / 'stockpred.db'}"
        if not self.MLFLOW_TRACKING_URI:
            self.MLFLOW_TRACKING_URI = f"sqlite:///{data_dir / 'mlflow.db'}"
        if not self.MLFLOW_ARTIFACT_ROOT:
            self.MLFLOW_ARTIFACT_ROOT = (data_dir / "mlartifacts").as_uri()
        return self

    @property
    def prediction_log_dir(self) -> Path:
        """The spools of every worker process (one directory each) and the quarantine."""
        return self.DATA_DIR.resolve() / "prediction-log"

    @property
    def market_feed_lock(self) -> Path:
        """The lock that makes one process of this DATA_DIR the market feed (see feed.py)."""
        return self.DATA_DIR.resolve() / "market-feed.lock"

    @property
    def model_cache_dir(self) -> Path:
        """Where downloaded model versions are kept, so the service starts with the registry down."""
        return self.DATA_DIR.resolve() / "model-cache"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings; tests build their own `Settings` instead."""
    return Settings()
