"""A regime change in one symbol raises its drift score above 0.2; the others stay low."""

from __future__ import annotations

from service.container import Container
from service.market.ingestion import ingest
from service.market.synthetic import next_bar_index, synthetic_bars_after
from service.monitoring.drift_monitor import DriftMonitor
from service.storage.market_bars import last_bar

SHIFTED = "NVDA"
DAYS = 120  # about half of the 250-bar drift window


def serve_shifted_days(container: Container, symbol: str, days: int) -> None:
    """Day by day, as production would: a new bar arrives, then the symbol is predicted."""
    with container.database.session() as session:
        newest = last_bar(session, symbol=symbol)
    assert newest is not None
    # The regime changes at the first new bar; prices continue from the stored path.
    bars = synthetic_bars_after(symbol, after=newest.ts, count=days, shift_from=next_bar_index(newest.ts))
    assert abs(bars[0].open / newest.close - 1) < 0.2
    for bar in bars:
        ingest([bar], database=container.database, feature_store=container.feature_store)
        container.predictions.predict(symbol)


def test_shifted_symbol_drifts_and_the_others_do_not(container: Container) -> None:
    container.drift.refresh()
    before = {symbol: score.score for symbol, score in container.drift.latest.items()}
    assert set(before) == set(container.models.current.symbols)  # type: ignore[union-attr]
    assert all(score is not None and score < 0.2 for score in before.values()), before

    serve_shifted_days(container, SHIFTED, DAYS)
    container.drift.refresh()
    after = container.drift.latest
    shifted = after[SHIFTED].score
    assert shifted is not None
    assert shifted > 0.2, after[SHIFTED]
    for symbol, score in after.items():
        if symbol != SHIFTED:
            assert score.score == before[symbol], symbol  # untouched windows, unchanged scores
    # the features driving the score are the ones with enough effective samples
    assert set(after[SHIFTED].scored_features) <= set(after[SHIFTED].features)
    assert "sma_ratio_20_50" not in after[SHIFTED].scored_features


def test_no_score_below_the_minimum_window(container: Container) -> None:
    monitor = DriftMonitor(
        database=container.database,
        models=container.models,
        telemetry=container.telemetry,
        window_bars=250,
        min_window=100,
        min_effective_samples=50,
        interval_seconds=60,
    )
    for _ in range(3):
        for symbol in ("AAPL", "MSFT"):
            container.predictions.predict(symbol)  # observe() keeps one vector per bar
    monitor.observe(container.predictions.predict("AAPL"), container.models.current)  # type: ignore[arg-type]
    monitor.refresh()
    assert monitor.latest == {}
