"""Training on stored bars, the MLflow registry (SQLite-backed stores in temp dirs) and the
model manager that serves, caches and follows the champion.

MLflow work is slow (a new store costs seconds), so one store per module holds version 1 and
tests that add versions assert relative to what is there. A small market (2 symbols) and a small
model keep training fast.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from service.config import Settings
from service.market.synthetic import synthetic_bars
from service.model.features import FEATURE_SET
from service.model.manager import ModelManager
from service.model.registry import CACHE_POINTER, ModelRegistry
from service.model.training import (
    VALIDATION_SHARE,
    NotEnoughDataError,
    TrainedModel,
    build_dataset,
    lag1_autocorrelation,
    train,
)
from service.monitoring.drift import histogram
from service.storage.database import Database
from service.storage.market_bars import upsert_bars
from service.storage.migrations import upgrade_to_head
from service.telemetry.instruments import ServiceMetrics
from service.telemetry.providers import Telemetry
from tests.conftest import make_settings
from tests.harness import free_port

SYMBOLS = ("AAPL", "MSFT")
BARS_PER_SYMBOL = 150
SMALL_MODEL = {"n_estimators": 20}
MLFLOW_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
# Generous: fail-fast settings give one retry and a 3 s timeout; MLflow's defaults retry for minutes.
FAIL_FAST_BOUND_SECONDS = 30.0


@pytest.fixture(scope="module", autouse=True)
def restore_mlflow_globals() -> Iterator[None]:
    """ModelRegistry sets MLflow's process-wide URIs (and their environment variables); undo that
    so later test modules build settings from their own data directories."""
    saved = {name: os.environ.get(name) for name in MLFLOW_URI_VARIABLES}
    yield
    mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])  # type: ignore[arg-type]
    mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])  # type: ignore[arg-type]
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


# --- data and training ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path_factory.mktemp('market') / 'bars.db'}")
    upgrade_to_head(db.engine)
    with db.session() as session:
        for symbol in SYMBOLS:
            upsert_bars(session, bars=synthetic_bars(symbol, count=BARS_PER_SYMBOL))
        upsert_bars(session, bars=synthetic_bars("TINY", count=FEATURE_SET.min_bars))  # too short
    yield db
    db.dispose()


@pytest.fixture(scope="module")
def dataset(market: Database) -> pd.DataFrame:
    return build_dataset(market, symbols=[*SYMBOLS, "TINY"])


@pytest.fixture(scope="module")
def trained(dataset: pd.DataFrame) -> TrainedModel:
    return train(dataset, seed=1, params=SMALL_MODEL)


def test_dataset_has_every_complete_row_of_every_symbol(dataset: pd.DataFrame) -> None:
    # Per symbol: rows min_bars-1 .. count-2 (first full feature row, last one with a next close).
    expected_rows = BARS_PER_SYMBOL - FEATURE_SET.min_bars
    assert dataset.groupby("symbol").size().to_dict() == dict.fromkeys(SYMBOLS, expected_rows)
    assert {*FEATURE_SET.names, "up", "ts", "symbol"} <= set(dataset.columns)
    assert dataset["ts"].is_monotonic_increasing


def test_no_symbol_with_enough_bars_is_an_error(market: Database) -> None:
    with pytest.raises(NotEnoughDataError):
        build_dataset(market, symbols=["TINY", "NONE"])


def test_split_is_time_ordered_without_overlap(dataset: pd.DataFrame, trained: TrainedModel) -> None:
    validation_start = pd.Timestamp(trained.validation_start)
    stamps = pd.to_datetime(dataset["ts"])
    assert trained.train_rows == int((stamps < validation_start).sum())
    assert trained.validation_rows == int((stamps >= validation_start).sum())
    assert trained.train_rows + trained.validation_rows == len(dataset)
    times = stamps.drop_duplicates().sort_values()
    validation_times = int((times >= validation_start).sum())
    assert validation_times == len(times) - int(len(times) * (1 - VALIDATION_SHARE))


def test_importances_cover_every_feature_and_sum_to_one(trained: TrainedModel) -> None:
    assert tuple(trained.importances) == FEATURE_SET.names
    assert sum(trained.importances.values()) == pytest.approx(1.0)
    assert all(value >= 0 for value in trained.importances.values())


def test_reference_has_decile_histograms_of_the_training_rows(
    dataset: pd.DataFrame, trained: TrainedModel
) -> None:
    train_rows = dataset[pd.to_datetime(dataset["ts"]) < pd.Timestamp(trained.validation_start)]
    assert set(trained.reference.features) == set(FEATURE_SET.names)
    for name, reference in trained.reference.features.items():
        assert len(reference.edges) == 9, name
        assert sum(reference.shares) == pytest.approx(1.0), name
        assert reference == histogram(train_rows[name].to_numpy(float)), name
    assert sum(trained.reference.confidence.shares) == pytest.approx(1.0)
    assert all(0.5 <= edge <= 1.0 for edge in trained.reference.confidence.edges)


def test_lag1_autocorrelation_is_the_median_over_symbols_in_time_order() -> None:
    rng = np.random.default_rng(5)
    stamps = pd.date_range("2024-01-01", periods=30, freq="D", tz="UTC")
    frames, expected_by_symbol = [], []
    for symbol, trend in (("A", 0.0), ("B", 0.3), ("C", 1.0)):  # more trend, more autocorrelation
        values = {name: trend * np.arange(30) + rng.normal(size=30) for name in FEATURE_SET.names}
        frames.append(pd.DataFrame({"ts": stamps, "symbol": symbol, **values}))
        x = values["rsi_14"]
        expected_by_symbol.append(float(np.corrcoef(x[:-1], x[1:])[0, 1]))  # Pearson of neighbours
    rows = pd.concat(frames).sample(frac=1.0, random_state=1)  # shuffled: the function must sort
    result = lag1_autocorrelation(rows)
    assert set(result) == set(FEATURE_SET.names)
    assert result["rsi_14"] == pytest.approx(sorted(expected_by_symbol)[1])


def test_trained_reference_records_autocorrelation_of_every_feature(trained: TrainedModel) -> None:
    autocorrelation = trained.reference.autocorrelation
    assert set(autocorrelation) == set(FEATURE_SET.names)
    assert all(-1.0 <= value <= 1.0 for value in autocorrelation.values())
    # A 50-bar moving-average ratio barely changes from one bar to the next.
    assert autocorrelation["sma_ratio_20_50"] > 0.8


# --- registry ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Store:
    """An MLflow store in a temp dir where version 1 was registered (and was then the champion)."""

    settings: Settings
    first_version: str
    champion_after_first: str | None


def sqlite_settings(data_dir: Path) -> Settings:
    # Explicit, because mlflow.set_tracking_uri also writes MLFLOW_TRACKING_URI into os.environ.
    return make_settings(data_dir, MLFLOW_TRACKING_URI=f"sqlite:///{data_dir.resolve() / 'mlflow.db'}")


def unreachable_settings(data_dir: Path) -> tuple[Settings, int]:
    port = free_port()  # nothing listens there
    return make_settings(data_dir, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}"), port


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, trained: TrainedModel) -> Store:
    settings = sqlite_settings(tmp_path_factory.mktemp("mlflow") / "data")
    registry = ModelRegistry(settings)
    first = registry.register(trained)
    return Store(settings, first, registry.champion_version())


def metered_telemetry() -> tuple[Telemetry, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    tracer_provider = trace.NoOpTracerProvider()
    telemetry = Telemetry(
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        metrics=ServiceMetrics(meter_provider.get_meter("test")),
        tracer=tracer_provider.get_tracer("test"),
    )
    return telemetry, reader


def reloads(reader: InMemoryMetricReader, outcome: str) -> int:
    data = reader.get_metrics_data()
    points: list[Any] = [
        point
        for resource in (data.resource_metrics if data else [])
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "model.reloads"
        for point in metric.data.data_points
    ]
    return sum(int(p.value) for p in points if p.attributes.get("outcome") == outcome)


def test_register_creates_version_1_and_points_the_alias_at_it(store: Store, trained: TrainedModel) -> None:
    assert (store.first_version, store.champion_after_first) == ("1", "1")
    rows = {row["version"]: row for row in ModelRegistry(store.settings).versions()}
    assert rows["1"]["validation_accuracy"] == pytest.approx(round(trained.validation_accuracy, 4))


def test_registering_again_creates_the_next_version_and_moves_the_alias(
    store: Store, trained: TrainedModel
) -> None:
    registry = ModelRegistry(store.settings)
    newest_before = max(int(row["version"]) for row in registry.versions())
    version = registry.register(trained)
    assert int(version) == newest_before + 1
    assert registry.champion_version() == version
    aliases = {row["version"]: row["aliases"] for row in registry.versions()}
    assert aliases.pop(version) == ["champion"]
    assert all(not held for held in aliases.values())  # the alias left the previous version


def test_fetch_caches_versions_and_load_cached_returns_the_last_fetched(
    store: Store, trained: TrainedModel, dataset: pd.DataFrame
) -> None:
    registry = ModelRegistry(store.settings)
    other = registry.register(trained, promote=False)
    cache = store.settings.model_cache_dir / store.settings.MODEL_NAME
    first = registry.fetch("1")
    assert (first.version, first.source) == ("1", "registry")
    assert (cache / "1" / "MLmodel").exists()
    registry.fetch(other)
    cached = registry.load_cached()
    assert cached is not None
    assert (cached.version, cached.source) == (other, "cache")
    assert json.loads((cache / CACHE_POINTER).read_text()) == {"version": other}
    # What comes back from the cache is the trained model, with its metadata.
    rows = dataset[list(FEATURE_SET.names)].to_numpy(float)[:25]
    assert np.allclose(cached.estimator.predict_proba(rows), trained.estimator.predict_proba(rows))
    assert cached.symbols == SYMBOLS
    assert cached.reference == trained.reference


def test_manager_serves_the_cached_version_when_the_registry_is_unreachable(
    store: Store, tmp_path: Path
) -> None:
    expected = ModelRegistry(store.settings).fetch("1").version  # the cache now points at version 1
    settings, _ = unreachable_settings(store.settings.DATA_DIR)
    manager = ModelManager(
        registry=ModelRegistry(settings), telemetry=metered_telemetry()[0], poll_seconds=60
    )
    started = time.monotonic()
    served = manager.load_initial()
    assert time.monotonic() - started < FAIL_FAST_BOUND_SECONDS
    assert served is not None
    assert (served.version, served.source) == (expected, "cache")
    assert manager.last_error is not None


def test_unreachable_registry_is_reported_as_a_connection_failure(store: Store) -> None:
    """The error must come from trying the registry's address, not from MLflow's own settings."""
    settings, port = unreachable_settings(store.settings.DATA_DIR)
    manager = ModelManager(
        registry=ModelRegistry(settings), telemetry=metered_telemetry()[0], poll_seconds=60
    )
    manager.load_initial()
    assert manager.last_error is not None
    assert f"port={port}" in manager.last_error or f"127.0.0.1:{port}" in manager.last_error, (
        manager.last_error
    )


def test_manager_swaps_to_a_newly_promoted_champion(store: Store, trained: TrainedModel) -> None:
    telemetry, reader = metered_telemetry()
    registry = ModelRegistry(store.settings)
    manager = ModelManager(registry=registry, telemetry=telemetry, poll_seconds=60)
    initial = manager.load_initial()
    assert initial is not None
    assert (initial.version, initial.source) == (registry.champion_version(), "registry")
    candidate = registry.register(trained, promote=False)
    assert manager.check_for_new_champion() is False  # registered, but the alias did not move
    registry.promote(candidate)
    assert manager.check_for_new_champion() is True
    current = manager.current
    assert current is not None
    assert current.version == candidate
    assert manager.check_for_new_champion() is False  # nothing changed since
    assert (reloads(reader, "success"), reloads(reader, "failure")) == (2, 0)


def test_poll_against_an_unreachable_registry_counts_a_failure_and_keeps_serving(store: Store) -> None:
    ModelRegistry(store.settings).fetch("1")
    settings, _ = unreachable_settings(store.settings.DATA_DIR)
    telemetry, reader = metered_telemetry()
    manager = ModelManager(registry=ModelRegistry(settings), telemetry=telemetry, poll_seconds=60)
    served = manager.load_initial()
    assert served is not None
    assert manager.check_for_new_champion() is False
    assert manager.current is served
    assert manager.last_error is not None
    assert reloads(reader, "failure") == 1


# --- process-wide MLflow state -------------------------------------------------------------------


def test_a_second_registry_does_not_redirect_the_firsts_downloads(store: Store, tmp_path: Path) -> None:
    """Each registry talks to its own store, however many exist in the process."""
    # Same store as `store`, but an empty cache so that fetch must download.
    first = ModelRegistry(
        make_settings(tmp_path / "a", MLFLOW_TRACKING_URI=store.settings.MLFLOW_TRACKING_URI)
    )
    ModelRegistry(sqlite_settings(tmp_path / "b"))  # another registry, another store
    assert first.fetch("1").version == "1"
