"""The feature store under concurrency: no stale write-back, exact counters, and every writer
(API, CLI `advance` and `import-csv`) invalidating Redis the same way.

Interleavings are forced with events (bounded waits), never with sleeps.
"""

from __future__ import annotations

import csv
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from service.cli import app as cli
from service.config import get_settings
from service.container import build_container, make_redis
from service.market.synthetic import synthetic_bars, synthetic_bars_after
from service.serving.feature_epochs import FeatureEpochs
from service.serving.feature_store import FeatureStore, FeatureVector
from service.storage.database import Database
from service.storage.market_bars import last_bar, upsert_bars
from service.storage.migrations import upgrade_to_head
from service.telemetry.providers import noop_telemetry
from tests.conftest import make_settings
from tests.harness import Server

EVENT_TIMEOUT = 10.0


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'features.db'}")
    upgrade_to_head(db.engine)
    with db.session() as session:
        upsert_bars(session, bars=synthetic_bars("AAPL", count=80))
    yield db
    db.dispose()


class PausingStore(FeatureStore):
    """Computes as usual, then waits (bounded) until the test lets it write back."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.pause = True
        self.computed = threading.Event()
        self.release = threading.Event()

    def compute(self, symbol: str) -> FeatureVector:
        vector = super().compute(symbol)
        if self.pause:
            self.pause = False
            self.computed.set()
            assert self.release.wait(EVENT_TIMEOUT), "the test never released the computation"
        return vector


@pytest.mark.integration
def test_a_computation_that_started_before_an_ingest_is_not_written_back(
    database: Database, redis_server: Server, tmp_path: Path
) -> None:
    client = make_redis(make_settings(tmp_path / "unused", REDIS_URL=redis_server.url))
    assert client is not None
    store = PausingStore(
        database=database,
        redis_client=client,
        telemetry=noop_telemetry(),
        l1_ttl_seconds=30.0,
        redis_ttl_seconds=300,
    )
    client.delete(store.redis_key("AAPL"))
    with database.session() as session:
        before = last_bar(session, symbol="AAPL")
    assert before is not None
    lookup = threading.Thread(target=store.get, args=("AAPL",))
    lookup.start()
    try:
        assert store.computed.wait(EVENT_TIMEOUT), "the lookup never computed"
        # An ingest lands while the lookup holds a vector of the old bars.
        new_bar = synthetic_bars_after("AAPL", after=before.ts, count=1)
        with database.session() as session:
            upsert_bars(session, bars=new_bar)
        store.invalidate(["AAPL"])
    finally:
        store.release.set()
        lookup.join(EVENT_TIMEOUT)
    assert not lookup.is_alive()
    assert client.exists(store.redis_key("AAPL")) == 0, "the stale vector reached Redis"
    fresh = store.get("AAPL")
    assert fresh.level == "computed", "the stale vector reached L1"
    assert fresh.vector.last_bar == new_bar[0].ts
    client.delete(store.redis_key("AAPL"))
    client.close()


def test_stats_are_exact_under_concurrency(database: Database) -> None:
    store = FeatureStore(
        database=database,
        redis_client=None,
        telemetry=noop_telemetry(),
        l1_ttl_seconds=30,
        redis_ttl_seconds=300,
    )
    threads, lookups = 8, 500
    start = threading.Barrier(threads)

    def work() -> None:
        start.wait(EVENT_TIMEOUT)
        for _ in range(lookups):
            store.get("AAPL")

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    stats = store.stats()
    assert stats["lookups"] == threads * lookups
    assert stats["misses"] == 1
    assert stats["hits"] == {"l1": threads * lookups - 1, "redis": 0}


# --- the CLI's writers -----------------------------------------------------------------------------


@pytest.fixture
def cli_env(data_dir: Path, redis_server: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The CLI's settings (read from the environment) pointed at a private data dir and Redis."""
    for name, value in {
        "DATA_DIR": str(data_dir),
        "DATABASE_URL": "",
        "MLFLOW_TRACKING_URI": "",
        "REDIS_URL": redis_server.url,
        "LOG_JSON": "false",
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield data_dir
    get_settings.cache_clear()


def cache_features(symbols: list[str]) -> redis.Redis:
    """Compute and cache the symbols' features through a container, as the API would."""
    container = build_container(get_settings())
    try:
        for symbol in symbols:
            container.feature_store.get(symbol)
    finally:
        container.close()
    client = redis.Redis.from_url(get_settings().REDIS_URL or "")
    assert all(client.exists(FeatureStore.redis_key(symbol)) for symbol in symbols)
    return client


@pytest.mark.integration
def test_cli_advance_invalidates_redis(cli_env: Path) -> None:
    client = cache_features(["AAPL", "MSFT"])
    result = CliRunner().invoke(cli, ["advance", "--days", "1"])
    assert result.exit_code == 0, result.output
    assert client.exists(FeatureStore.redis_key("AAPL"), FeatureStore.redis_key("MSFT")) == 0
    client.close()


@pytest.mark.integration
def test_cli_import_csv_invalidates_redis(cli_env: Path, tmp_path: Path) -> None:
    client = cache_features(["AAPL"])
    container = build_container(get_settings())
    try:
        with container.database.session() as session:
            newest = last_bar(session, symbol="AAPL")
    finally:
        container.close()
    assert newest is not None
    path = tmp_path / "bars.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["timestamp", "open", "high", "low", "close", "volume", "symbol"])
        ts = newest.ts + timedelta(days=1)
        writer.writerow([ts.isoformat(), 10, 11, 9, 10.5, 1000, "AAPL"])
    result = CliRunner().invoke(cli, ["import-csv", str(path)])
    assert result.exit_code == 0, result.output
    assert client.exists(FeatureStore.redis_key("AAPL")) == 0
    client.close()


def test_an_invalidation_in_one_store_retires_the_l1_of_another_sharing_the_epochs(
    database: Database, tmp_path: Path
) -> None:
    """Two workers of one DATA_DIR, in one process here: separate L1s, one epochs file."""

    def store() -> FeatureStore:
        return FeatureStore(
            database=database,
            redis_client=None,
            telemetry=noop_telemetry(),
            l1_ttl_seconds=30,
            redis_ttl_seconds=300,
            epochs=FeatureEpochs(tmp_path / "feature-epochs"),
        )

    ingesting, serving = store(), store()
    assert serving.get("AAPL").level == "computed"
    assert serving.get("AAPL").level == "l1"
    with database.session() as session:
        before = last_bar(session, symbol="AAPL")
        assert before is not None
        newer = synthetic_bars_after("AAPL", after=before.ts, count=1)
        upsert_bars(session, bars=newer)
    ingesting.invalidate(["AAPL"])
    fresh = serving.get("AAPL")
    assert (fresh.level, fresh.vector.last_bar) == ("computed", newer[0].ts)
    ingesting.close()
    serving.close()
