"""The synthetic market, CSV import and bar validation."""

from __future__ import annotations

import itertools
import math
import statistics
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from service.market.csv_import import CsvFormatError, read_csv_bars
from service.market.synthetic import synthetic_bars, synthetic_bars_after
from service.market.validation import BarLimits, duplicate_keys, is_sound, validate_bar
from service.storage.market_bars import BarIn

SYMBOLS = ("AAPL", "MSFT", "GOOGL", "AMZN", "NVDA")


def bar(**overrides: object) -> BarIn:
    values: dict[str, object] = {
        "symbol": "AAPL",
        "ts": datetime(2024, 3, 1, 21, tzinfo=UTC),
        "open": 10.0,
        "high": 11.0,
        "low": 9.0,
        "close": 10.5,
        "volume": 1000.0,
    }
    values.update(overrides)
    return BarIn(**values)  # type: ignore[arg-type]


def log_return_std(bars: list[BarIn]) -> float:
    return statistics.stdev(math.log(b.close / a.close) for a, b in itertools.pairwise(bars))


# --- synthetic market ----------------------------------------------------------------------------


def test_synthetic_bars_are_deterministic() -> None:
    assert synthetic_bars("AAPL", count=50) == synthetic_bars("AAPL", count=50)


def test_symbols_and_seeds_give_different_markets() -> None:
    base = synthetic_bars("AAPL", count=20)
    assert [b.close for b in synthetic_bars("MSFT", count=20)] != [b.close for b in base]
    assert [b.close for b in synthetic_bars("AAPL", count=20, seed=7)] != [b.close for b in base]


def test_a_shorter_market_is_a_prefix_of_a_longer_one() -> None:
    long = synthetic_bars("NVDA", count=300)
    for count in (1, 37, 250):
        assert synthetic_bars("NVDA", count=count) == long[:count]


def test_bars_after_a_stored_bar_continue_the_market_exactly() -> None:
    long = synthetic_bars("GOOGL", count=120)
    assert synthetic_bars_after("GOOGL", after=long[99].ts, count=15) == long[100:115]


def test_bars_after_a_time_inside_a_day_start_with_that_days_close() -> None:
    long = synthetic_bars("GOOGL", count=40)
    after = long[20].ts - timedelta(hours=1)
    assert synthetic_bars_after("GOOGL", after=after, count=3) == long[20:23]


def test_bars_are_weekday_closes_at_21_utc_strictly_increasing() -> None:
    bars = synthetic_bars("AMZN", count=30)
    assert all(b.ts.weekday() < 5 and (b.ts.hour, b.ts.minute) == (21, 0) for b in bars)
    assert all(b.ts.utcoffset() == timedelta(0) for b in bars)
    assert all(a.ts < b.ts for a, b in itertools.pairwise(bars))


@pytest.mark.parametrize("shift_from", [None, 150])
def test_every_generated_bar_is_valid(shift_from: int | None) -> None:
    for symbol in SYMBOLS:
        for generated in synthetic_bars(symbol, count=300, shift_from=shift_from):
            assert validate_bar(generated) == [], generated


def test_shift_leaves_earlier_bars_alone_and_raises_volatility_after_it() -> None:
    plain = synthetic_bars("MSFT", count=400)
    shifted = synthetic_bars("MSFT", count=400, shift_from=300)
    assert shifted[:300] == plain[:300]
    # The shifted regime has 0.06 daily volatility; the normal ones have at most 0.02.
    assert log_return_std(shifted[300:]) > 2 * log_return_std(plain[300:])
    assert log_return_std(shifted[300:]) > 2 * log_return_std(shifted[:300])


# --- CSV -----------------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bars.csv"
    path.write_text(text)
    return path


def test_csv_with_symbol_column(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "timestamp,open,high,low,close,volume,symbol\n"
        "2024-03-01T15:30:00+01:00,10,11,9,10.5,1000,aapl\n"
        "2024-03-04T21:00:00,20,22,19,21,2000,MSFT\n",
    )
    bars = list(read_csv_bars(path))
    assert bars == [
        BarIn("AAPL", datetime(2024, 3, 1, 14, 30, tzinfo=UTC), 10.0, 11.0, 9.0, 10.5, 1000.0),
        BarIn("MSFT", datetime(2024, 3, 4, 21, 0, tzinfo=UTC), 20.0, 22.0, 19.0, 21.0, 2000.0),
    ]


def test_csv_without_symbol_column_uses_the_default_symbol(tmp_path: Path) -> None:
    path = write(tmp_path, "Timestamp, Open ,High,Low,Close,Volume\n2024-03-01,10,11,9,10.5,1000\n")
    (only,) = list(read_csv_bars(path, default_symbol="nvda"))
    assert only.symbol == "NVDA"


def test_csv_date_only_timestamp_means_21_utc(tmp_path: Path) -> None:
    path = write(tmp_path, "timestamp,open,high,low,close,volume\n2024-03-01,10,11,9,10.5,1000\n")
    (only,) = list(read_csv_bars(path, default_symbol="AAPL"))
    assert only.ts == datetime(2024, 3, 1, 21, 0, tzinfo=UTC)
    assert only.ts.utcoffset() == timedelta(0)


def test_csv_missing_columns_are_named(tmp_path: Path) -> None:
    path = write(tmp_path, "timestamp,open,high,close\n2024-03-01,10,11,10.5\n")
    with pytest.raises(CsvFormatError, match=r"missing columns \['low', 'volume'\]"):
        list(read_csv_bars(path, default_symbol="AAPL"))


def test_csv_bad_number_reports_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "timestamp,open,high,low,close,volume\n2024-03-01,10,11,9,10.5,1000\n2024-03-04,10,eleven,9,10,1\n",
    )
    with pytest.raises(CsvFormatError, match=r"bars\.csv:3: .*eleven"):
        list(read_csv_bars(path, default_symbol="AAPL"))


def test_csv_bad_timestamp_reports_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "timestamp,open,high,low,close,volume\nyesterday,10,11,9,10.5,1000\n")
    with pytest.raises(CsvFormatError, match=r"bars\.csv:2: "):
        list(read_csv_bars(path, default_symbol="AAPL"))


def test_csv_without_any_symbol_is_an_error_on_the_first_row(tmp_path: Path) -> None:
    path = write(tmp_path, "timestamp,open,high,low,close,volume\n2024-03-01,10,11,9,10.5,1000\n")
    with pytest.raises(CsvFormatError, match=r"bars\.csv:2: no symbol"):
        list(read_csv_bars(path))


# --- validation ----------------------------------------------------------------------------------


def test_sound_bar_has_no_problems() -> None:
    assert validate_bar(bar()) == []


def test_negative_price_is_named() -> None:
    assert "close must be > 0 (got -1.0)" in validate_bar(bar(close=-1.0))


def test_negative_volume_is_named() -> None:
    assert validate_bar(bar(volume=-5.0)) == ["volume must be >= 0 (got -5.0)"]


def test_high_below_low_is_named() -> None:
    problems = validate_bar(bar(open=9.5, close=9.5, high=9.0, low=10.0))
    assert "high (9.0) is below low (10.0)" in problems


def test_open_outside_the_range_is_named() -> None:
    assert validate_bar(bar(open=12.0)) == ["open and close must lie within [low, high]"]


def test_non_finite_numbers_are_rejected() -> None:
    assert "open must be a finite number (got nan)" in validate_bar(bar(open=math.nan))
    assert "high must be a finite number (got inf)" in validate_bar(bar(high=math.inf))
    assert validate_bar(bar(volume=math.inf)) == ["volume must be a finite number (got inf)"]


def test_absurd_magnitudes_are_rejected_by_the_bounds() -> None:
    limits = BarLimits(max_price=100.0, max_volume=1e6)
    assert validate_bar(bar(high=150.0), limits) == ["high must be <= 100 (got 150)"]
    assert validate_bar(bar(volume=2e6), limits) == ["volume must be <= 1e+06 (got 2e+06)"]
    assert validate_bar(bar(open=1e300, high=1e300)) != []  # the default bound is 1e6


def test_volume_is_a_whole_number() -> None:
    assert validate_bar(bar(volume=10.5)) == ["volume must be a whole number (got 10.5)"]
    assert validate_bar(bar(volume=10.0)) == []


def test_timestamps_may_not_be_in_the_future_beyond_the_skew() -> None:
    now = datetime(2024, 3, 1, 21, tzinfo=UTC)
    limits = BarLimits(max_future_skew=timedelta(minutes=5))
    assert validate_bar(bar(ts=now + timedelta(minutes=4)), limits, now=now) == []
    (problem,) = validate_bar(bar(ts=now + timedelta(minutes=6)), limits, now=now)
    assert "is in the future" in problem


def test_symbols_follow_the_ticker_pattern() -> None:
    assert validate_bar(bar(symbol="not a ticker")) == ["'not a ticker' is not a ticker symbol"]


def test_only_sound_closes_resolve_outcomes() -> None:
    assert is_sound(close=10.0)
    for close in (math.nan, math.inf, 0.0, -1.0, 1e300):
        assert not is_sound(close=close), close


# --- duplicates ----------------------------------------------------------------------------------


def test_duplicate_keys_names_each_repeat() -> None:
    first = bar()
    other_symbol = bar(symbol="MSFT")
    later = bar(ts=first.ts + timedelta(days=1))
    assert duplicate_keys([first, other_symbol, later]) == []
    assert duplicate_keys([first, bar(close=10.2), other_symbol, bar(open=10.1)]) == [
        f"AAPL@{first.ts.isoformat()}",
        f"AAPL@{first.ts.isoformat()}",
    ]
