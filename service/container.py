"""Builds every long-lived component once, in dependency order, and tears them down in reverse.

The API's lifespan and the CLI both use it, so `stockpred train` and the running service talk to
the same database and registry in the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.background import Leadership
from service.config import Settings
from service.market.feed import MarketFeed
from service.market.ingestion import IngestResult, ingest
from service.market.synthetic import synthetic_bars
from service.market.validation import BarLimits
from service.model.manager import ModelManager
from service.model.registry import ModelRegistry
from service.model.training import build_dataset, train
from service.monitoring.drift_monitor import DriftMonitor
from service.monitoring.health import HealthMonitor
from service.monitoring.outcomes import OutcomeMonitor
from service.serving.feature_epochs import FeatureEpochs
from service.serving.feature_store import FeatureStore
from service.serving.predictions import PredictionService
from service.storage.database import Database, PoolLimits
from service.storage.market_bars import BarIn, count_bars
from service.storage.migrations import upgrade_to_head
from service.storage.prediction_log.log import PredictionLog
from service.telemetry.instrumentation import instrument_engine, instrument_redis_client
from service.telemetry.providers import Telemetry, noop_telemetry

log = logging.getLogger(__name__)


class Stoppable(Protocol):
    def stop(self) -> None: ...


@dataclass
class Container:
    settings: Settings
    telemetry: Telemetry
    database: Database
    redis_client: redis.Redis | None
    feature_store: FeatureStore
    registry: ModelRegistry
    models: ModelManager
    prediction_log: PredictionLog
    predictions: PredictionService
    health: HealthMonitor
    outcomes: OutcomeMonitor
    drift: DriftMonitor
    leadership: Leadership
    feed: MarketFeed | None = None  # None when MARKET_FEED=off
    _started: list[Stoppable] = field(default_factory=list)

    def start_background(self) -> None:
        """Everything serving needs running: the prediction log first, then the periodic tasks."""
        self.prediction_log.start()
        for task in (self.health, self.outcomes, self.drift, self.feed):
            if task is None:
                continue
            task.start()
            self._started.append(task)
        self.models.start_polling()
        self._started.append(self.models)

    def close(self) -> None:
        for task in reversed(self._started):
            task.stop()
        self._started.clear()
        self.prediction_log.close(flush_seconds=self.settings.SHUTDOWN_FLUSH_SECONDS)
        self.leadership.release()
        if self.redis_client is not None:
            self.redis_client.close()
        self.feature_store.close()
        self.database.dispose()


def build_container(settings: Settings, telemetry: Telemetry | None = None) -> Container:
    telemetry = telemetry or noop_telemetry()
    settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
    database = Database(
        settings.DATABASE_URL,
        PoolLimits(
            size=settings.DATABASE_POOL_SIZE,
            max_overflow=settings.DATABASE_MAX_OVERFLOW,
            timeout_seconds=settings.DATABASE_POOL_TIMEOUT_SECONDS,
        ),
    )
    instrument_engine(database.engine, telemetry)
    redis_client = make_redis(settings)
    if redis_client is not None:
        instrument_redis_client(redis_client, telemetry)
    feature_store = FeatureStore(
        database=database,
        redis_client=redis_client,
        telemetry=telemetry,
        l1_ttl_seconds=settings.FEATURE_L1_TTL_SECONDS,
        redis_ttl_seconds=settings.FEATURE_REDIS_TTL_SECONDS,
        redis_retry_after_seconds=settings.REDIS_RETRY_AFTER_SECONDS,
        # Shared by every process of the DATA_DIR: another worker's ingest retires this one's L1.
        epochs=FeatureEpochs(settings.DATA_DIR.resolve() / "feature-epochs"),
    )
    registry = ModelRegistry(settings)
    models = ModelManager(registry=registry, telemetry=telemetry, poll_seconds=settings.MODEL_POLL_SECONDS)
    # One process per DATA_DIR publishes the gauges computed from shared state (background.py).
    leadership = Leadership(settings.DATA_DIR.resolve() / "leader.lock")
    drift = DriftMonitor(
        database=database,
        models=models,
        telemetry=telemetry,
        window_bars=settings.DRIFT_WINDOW_BARS,
        min_window=settings.DRIFT_MIN_WINDOW,
        min_effective_samples=settings.DRIFT_MIN_EFFECTIVE_SAMPLES,
        interval_seconds=settings.MONITOR_INTERVAL_SECONDS,
        leader=leadership,
    )
    prediction_log = PredictionLog(
        root=settings.prediction_log_dir,
        database=database,
        telemetry=telemetry,
        max_bytes=settings.PREDICTION_LOG_MAX_BYTES,
        batch_rows=settings.PREDICTION_LOG_BATCH_ROWS,
        degraded_after_seconds=settings.PREDICTION_LOG_DEGRADED_AFTER_SECONDS,
    )
    predictions = PredictionService(
        database=database,
        feature_store=feature_store,
        models=models,
        prediction_log=prediction_log,
        telemetry=telemetry,
        on_served=[drift.observe],
    )
    feed = (
        None
        if settings.MARKET_FEED == "off"
        else MarketFeed(
            database=database,
            feature_store=feature_store,
            predictions=predictions,
            telemetry=telemetry,
            symbols=settings.SYMBOLS,
            seed=settings.SEED,
            mode=settings.MARKET_FEED,
            interval_seconds=settings.MARKET_FEED_INTERVAL_SECONDS,
            lock_path=settings.market_feed_lock,
            shift_symbol=settings.MARKET_FEED_SHIFT_SYMBOL,
            shift_from=settings.SEED_DAYS,
        )
    )
    return Container(
        settings=settings,
        telemetry=telemetry,
        database=database,
        redis_client=redis_client,
        feature_store=feature_store,
        registry=registry,
        models=models,
        prediction_log=prediction_log,
        predictions=predictions,
        health=HealthMonitor(
            database=database,
            prediction_log=prediction_log,
            redis_client=redis_client,
            registry=registry,
            models=models,
            telemetry=telemetry,
            interval_seconds=settings.HEALTH_CHECK_INTERVAL_SECONDS,
        ),
        outcomes=OutcomeMonitor(
            database=database,
            telemetry=telemetry,
            window_predictions=settings.ACCURACY_WINDOW_PREDICTIONS,
            window_hours=settings.ACCURACY_WINDOW_HOURS,
            interval_seconds=settings.MONITOR_INTERVAL_SECONDS,
            leader=leadership,
        ),
        drift=drift,
        leadership=leadership,
        feed=feed,
    )


def make_redis(settings: Settings) -> redis.Redis | None:
    """A client with short timeouts and no retries: a slow Redis must not hold requests hostage.

    redis-py's `Redis()` retries a timeout 10 times with backoff by default (about 4 s for a
    0.25 s timeout); `from_url` happens not to, and the explicit `Retry(..., 0)` keeps it so. The
    feature store's breaker is the retry policy. (tests/integration/test_faults_redis.py measures
    requests against a hung Redis.)
    """
    if not settings.REDIS_URL:
        return None
    return redis.Redis.from_url(
        settings.REDIS_URL,
        socket_timeout=settings.REDIS_TIMEOUT_SECONDS,
        socket_connect_timeout=settings.REDIS_TIMEOUT_SECONDS,
        health_check_interval=30,
        retry=Retry(NoBackoff(), 0),
    )


def ingest_bars(container: Container, bars: Sequence[BarIn]) -> IngestResult:
    """The one way every writer (API, CLI, seed) stores bars: validated against the configured
    bounds, then the symbols' cached features invalidated (L1 and Redis) and due outcomes resolved.
    """
    return ingest(
        bars,
        database=container.database,
        limits=BarLimits.from_settings(container.settings),
        feature_store=container.feature_store,
        predictions=container.predictions,
    )


# --- bootstrap: what `make run` needs on a fresh machine -------------------------------------------


def seed_if_empty(container: Container) -> int:
    """Store the synthetic market for every configured symbol when the database has no bars."""
    with container.database.session() as session:
        if count_bars(session) > 0:
            return 0
    settings = container.settings
    stored = 0
    for symbol in settings.SYMBOLS:
        bars = synthetic_bars(symbol, count=settings.SEED_DAYS, seed=settings.SEED)
        stored += ingest_bars(container, bars).inserted
    log.info("seeded synthetic market", extra={"bars": stored, "symbols": settings.SYMBOLS})
    return stored


def train_and_register(container: Container, *, promote: bool = True) -> str:
    """Train on every configured symbol's bars and register the result (as champion by default)."""
    dataset = build_dataset(container.database, symbols=container.settings.SYMBOLS)
    trained = train(dataset, seed=container.settings.SEED)
    version = container.registry.register(trained, promote=promote)
    log.info(
        "registered model",
        extra={"model_version": version, "validation_accuracy": round(trained.validation_accuracy, 4)},
    )
    return version


def bootstrap(container: Container) -> None:
    """Migrate, seed an empty database, and load (training first if needed) the champion."""
    upgrade_to_head(container.database.engine)
    if container.settings.BOOTSTRAP:
        seed_if_empty(container)
        container.models.load_initial(train_if_missing=lambda: train_and_register(container))
    else:
        container.models.load_initial()
    model = container.models.current
    if model is not None:
        container.drift.prefill(model.symbols)
