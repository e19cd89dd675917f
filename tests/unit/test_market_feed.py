"""The synthetic market feed, driven tick by tick on a bootstrapped container (SQLite, no threads).

Expected bars come from the synthetic market itself (`synthetic_bars`), never from the feed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from service.config import Settings
from service.container import Container, build_container
from service.market.feed import FeedMode, MarketFeed, same_bar
from service.market.ingestion import ingest
from service.market.synthetic import synthetic_bars
from service.storage.market_bars import BarIn, last_bar
from service.storage.migrations import upgrade_to_head
from service.storage.tables import RESOLVED, MarketBar, Prediction
from tests.conftest import ClientFactory, make_settings
from tests.harness import wait_until

SEEDED_LAST = datetime(2025, 11, 28, 21, 0, tzinfo=UTC)  # bar 499 of the seeded 500
FAR_FUTURE = datetime(2030, 1, 1, tzinfo=UTC)

FeedFactory = Callable[..., MarketFeed]


@pytest.fixture
def make_feed(container: Container) -> Iterator[FeedFactory]:
    """Feeds on the container's database, feature store and predictions; stopped at teardown."""
    made: list[MarketFeed] = []

    def build(
        *,
        mode: FeedMode = "auto",
        clock: Callable[[], datetime] = lambda: FAR_FUTURE,
        lock_path: Path | None = None,
        shift_symbol: str | None = None,
    ) -> MarketFeed:
        feed = MarketFeed(
            database=container.database,
            feature_store=container.feature_store,
            predictions=container.predictions,
            telemetry=container.telemetry,
            symbols=container.settings.SYMBOLS,
            seed=container.settings.SEED,
            mode=mode,
            interval_seconds=3600,
            lock_path=lock_path or container.settings.market_feed_lock,
            shift_symbol=shift_symbol,
            shift_from=container.settings.SEED_DAYS,
            clock=clock,
        )
        made.append(feed)
        return feed

    yield build
    for feed in made:
        feed.stop()


def newest(container: Container, symbol: str) -> MarketBar:
    with container.database.session() as session:
        bar = last_bar(session, symbol=symbol)
    assert bar is not None
    return bar


def bar_count(container: Container) -> int:
    with container.database.session() as session:
        return int(session.scalar(select(func.count()).select_from(MarketBar)) or 0)


def synthetic(container: Container, symbol: str, index: int, *, shift_from: int | None = None) -> BarIn:
    """Bar `index` of the synthetic market, as the settings' seed makes it."""
    settings = container.settings
    return synthetic_bars(symbol, count=index + 1, seed=settings.SEED, shift_from=shift_from)[index]


def test_seeded_history_ends_where_the_docstring_says(container: Container) -> None:
    assert container.settings.SEED_DAYS == 500
    for symbol in container.settings.SYMBOLS:
        assert newest(container, symbol).ts == SEEDED_LAST


def test_a_tick_appends_the_next_synthetic_bar_of_every_symbol(
    container: Container, make_feed: FeedFactory
) -> None:
    before = bar_count(container)
    feed = make_feed()
    tick = feed.tick()
    symbols = container.settings.SYMBOLS
    assert tick.appended == len(symbols)
    assert bar_count(container) == before + len(symbols)
    for symbol in symbols:
        stored = newest(container, symbol)
        assert same_bar(stored, synthetic(container, symbol, 500)), symbol
        assert stored.ts == datetime(2025, 12, 1, 21, 0, tzinfo=UTC)  # Friday's bar, then Monday's
    feed.stop()
    make_feed().tick()  # a new feed (a restart) continues the same path
    for symbol in symbols:
        assert same_bar(newest(container, symbol), synthetic(container, symbol, 501)), symbol


def test_the_next_bar_resolves_pending_predictions_against_the_real_closes(
    container: Container, make_feed: FeedFactory
) -> None:
    served = [container.predictions.predict(symbol) for symbol in ("AAPL", "MSFT", "AAPL")]
    assert container.predictions.flush_log()
    tick = make_feed().tick()
    assert tick.resolved == len(served)
    with container.database.session() as session:
        rows = {row.id: row for row in session.scalars(select(Prediction))}
    for result in served:
        row = rows[result.prediction_id]
        assert row.status == RESOLVED
        assert row.resolution_source == "bars"
        before, after = synthetic(container, result.symbol, 499), synthetic(container, result.symbol, 500)
        actual = "up" if after.close > before.close else "down"
        assert row.actual_direction == actual
        assert row.correct == (result.direction == actual)


def test_the_next_bar_invalidates_cached_features(container: Container, make_feed: FeedFactory) -> None:
    first = container.feature_store.get("NVDA")
    assert first.vector.last_bar == SEEDED_LAST
    assert container.feature_store.get("NVDA").level == "l1"  # cached (L1 TTL 30 s)
    make_feed().tick()
    after = container.feature_store.get("NVDA")
    assert after.level == "computed"
    assert after.vector.last_bar == newest(container, "NVDA").ts > SEEDED_LAST


def test_only_the_process_holding_the_lock_feeds_and_another_takes_over(
    container: Container, make_feed: FeedFactory, tmp_path: Path
) -> None:
    """Two feeds on one DATA_DIR (as two workers): one bar per period, not two."""
    lock = tmp_path / "market-feed.lock"
    first, second = make_feed(lock_path=lock), make_feed(lock_path=lock)
    assert first.tick().appended == 5
    assert second.tick().skipped == "standby"
    assert first.tick().appended == 5
    assert second.tick().skipped == "standby"
    for symbol in container.settings.SYMBOLS:
        assert same_bar(newest(container, symbol), synthetic(container, symbol, 501))
    first.stop()  # the holder exits: its lock goes with it
    assert second.tick().appended == 5
    for symbol in container.settings.SYMBOLS:
        assert same_bar(newest(container, symbol), synthetic(container, symbol, 502))


def test_two_feeds_appending_the_same_bar_store_it_once_and_resolve_once(container: Container) -> None:
    """The race the lock does not cover (processes with their own DATA_DIR): still no harm done."""
    container.predictions.predict("GOOGL")
    assert container.predictions.flush_log()
    bars = [synthetic(container, symbol, 500) for symbol in container.settings.SYMBOLS]
    parts = {
        "database": container.database,
        "feature_store": container.feature_store,
        "predictions": container.predictions,
    }
    before = bar_count(container)
    first, second = ingest(bars, **parts), ingest(bars, **parts)  # type: ignore[arg-type]
    assert (first.inserted, first.resolved_predictions) == (5, 1)
    assert (second.inserted, second.updated, second.resolved_predictions) == (0, 5, 0)
    assert bar_count(container) == before + 5


def test_the_feed_stops_at_real_time_then_follows_the_calendar(
    container: Container, make_feed: FeedFactory, caplog: pytest.LogCaptureFixture
) -> None:
    now = [SEEDED_LAST + timedelta(hours=1)]  # Friday 22:00 UTC: Monday's close is in the future
    feed = make_feed(clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="service.market.feed"):
        assert feed.tick().skipped == "real time"
        assert feed.tick().skipped == "real time"
    caught_up = [r for r in caplog.records if "caught up with real time" in r.getMessage()]
    assert len(caught_up) == 1, "said once, not every period"
    now[0] = datetime(2025, 12, 1, 20, 59, tzinfo=UTC)  # Monday, a minute before the close
    assert feed.tick().skipped == "real time"
    now[0] = datetime(2025, 12, 1, 21, 0, tzinfo=UTC)
    assert feed.tick().appended == 5
    assert feed.tick().skipped == "real time"  # one bar per business day
    for symbol in container.settings.SYMBOLS:
        assert newest(container, symbol).ts <= now[0]


def replace_newest(container: Container, symbol: str, **prices: float) -> None:
    """Overwrite a symbol's newest bar as an import of other data would."""
    stored = newest(container, symbol)
    bar = BarIn(
        symbol=symbol,
        ts=stored.ts,
        **{name: prices.get(name, getattr(stored, name)) for name in ("open", "high", "low", "close")},
        volume=stored.volume,
    )
    ingest([bar], database=container.database)


def test_auto_stays_off_on_imported_data_and_says_so(
    container: Container, make_feed: FeedFactory, caplog: pytest.LogCaptureFixture
) -> None:
    stored = newest(container, "AMZN")
    replace_newest(container, "AMZN", close=stored.close * 1.01, high=max(stored.high, stored.close * 1.01))
    before = bar_count(container)
    feed = make_feed()
    with caplog.at_level(logging.INFO, logger="service.market.feed"):
        assert feed.tick().skipped == "stopped"
    assert not feed.running
    assert bar_count(container) == before
    (record,) = [r for r in caplog.records if "market feed off" in r.getMessage()]
    assert "AMZN" in record.__dict__["reason"]
    assert feed.tick().skipped == "stopped"  # for good


def test_auto_stops_when_bars_are_imported_while_it_runs(
    container: Container, make_feed: FeedFactory
) -> None:
    feed = make_feed()
    assert feed.tick().appended == 5
    stored = newest(container, "MSFT")
    replace_newest(container, "MSFT", open=stored.low)
    assert feed.tick().skipped == "stopped"
    assert newest(container, "MSFT").ts == stored.ts


def test_on_feeds_whatever_the_database_holds(container: Container, make_feed: FeedFactory) -> None:
    stored = newest(container, "AMZN")
    replace_newest(container, "AMZN", close=stored.close * 1.01, high=max(stored.high, stored.close * 1.01))
    assert make_feed(mode="on").tick().appended == 5
    assert same_bar(newest(container, "AMZN"), synthetic(container, "AMZN", 500))


def test_an_unseeded_database_is_not_the_synthetic_market(tmp_path: Path) -> None:
    built = build_container(make_settings(tmp_path / "empty", MARKET_FEED="auto"))
    try:
        upgrade_to_head(built.database.engine)
        assert built.feed is not None
        assert built.feed.tick().skipped == "stopped"
    finally:
        built.close()


def test_the_shift_symbol_follows_the_shifted_regime_and_auto_accepts_it(
    container: Container, make_feed: FeedFactory
) -> None:
    feed = make_feed(shift_symbol="NVDA")
    for _ in range(3):
        assert feed.tick().appended == 5
    shift_from = container.settings.SEED_DAYS
    assert same_bar(newest(container, "NVDA"), synthetic(container, "NVDA", 502, shift_from=shift_from))
    assert not same_bar(newest(container, "NVDA"), synthetic(container, "NVDA", 502))
    assert same_bar(newest(container, "AAPL"), synthetic(container, "AAPL", 502))
    # A restart with the same settings recognises its own (shifted) market and goes on.
    feed.stop()
    restarted = make_feed(shift_symbol="NVDA")
    assert restarted.tick().appended == 5
    restarted.stop()
    # One without the shift does not: the newest NVDA bar is no longer the plain market's.
    assert make_feed().tick().skipped == "stopped"


def test_settings_validate_the_shift_symbol(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, MARKET_FEED_SHIFT_SYMBOL=" nvda ")
    assert settings.MARKET_FEED_SHIFT_SYMBOL == "NVDA"
    assert make_settings(tmp_path, MARKET_FEED_SHIFT_SYMBOL="").MARKET_FEED_SHIFT_SYMBOL is None
    with pytest.raises(ValueError, match="not one of SYMBOLS"):
        make_settings(tmp_path, MARKET_FEED_SHIFT_SYMBOL="TSLA")
    with pytest.raises(ValueError, match="MARKET_FEED"):
        make_settings(tmp_path, MARKET_FEED="sometimes")


def test_the_container_builds_a_feed_unless_it_is_off(settings: Settings) -> None:
    for mode, expected in (("off", False), ("auto", True), ("on", True)):
        built = build_container(settings.model_copy(update={"MARKET_FEED": mode}))
        try:
            assert (built.feed is not None) is expected, mode
        finally:
            built.close()


def test_the_running_service_feeds_on_its_own(make_client: ClientFactory, settings: Settings) -> None:
    """Through the app's lifespan: the feed is a background task like the others."""
    fast = settings.model_copy(update={"MARKET_FEED": "auto", "MARKET_FEED_INTERVAL_SECONDS": 0.2})
    client = make_client(fast)
    predicted = client.post("/predict", json={"symbol": "AAPL"}).json()
    assert predicted["as_of"].startswith("2025-11-28")

    def resolved() -> bool:
        body = client.get(f"/predictions/{predicted['prediction_id']}").json()
        return bool(body["status"] == RESOLVED)

    wait_until(resolved, timeout=30, what="the fed bar to resolve the prediction")
    newer = client.post("/predict", json={"symbol": "AAPL"}).json()
    assert newer["as_of"] > predicted["as_of"]
