"""Feature definitions against values worked out by hand from tiny, hand-made bar series.

Expected values are computed here from the definitions (plain Python, `statistics`), never
copied from a run of the code under test.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from service.model.features import (
    FEATURE_SET,
    InsufficientHistoryError,
    bars_frame,
    feature_frame,
    latest_vector,
    training_frame,
)
from service.storage.tables import MarketBar

START = datetime(2024, 1, 1, 21, 0, tzinfo=UTC)


def make_bars(
    closes: Sequence[float],
    *,
    volumes: Sequence[float] | None = None,
    spreads: Sequence[float] | None = None,
) -> list[MarketBar]:
    """Daily bars with the given closes; open = previous close, high/low = close ± spread."""
    volumes = volumes if volumes is not None else [1000.0 + 10 * (i % 7) for i in range(len(closes))]
    spreads = spreads if spreads is not None else [1.0] * len(closes)
    bars = []
    for i, close in enumerate(closes):
        open_ = closes[i - 1] if i else close
        bars.append(
            MarketBar(
                symbol="TEST",
                ts=START + timedelta(days=i),
                open=open_,
                high=max(open_, close) + spreads[i],
                low=min(open_, close) - spreads[i],
                close=close,
                volume=volumes[i],
            )
        )
    return bars


def wavy_closes(count: int) -> list[float]:
    """Closes that rise and fall irregularly, so every feature takes a non-trivial value."""
    return [100 + 8 * math.sin(0.7 * i) + 0.3 * i + (i % 3) for i in range(count)]


def features_of(bars: Sequence[MarketBar]) -> pd.DataFrame:
    return feature_frame(bars_frame(bars))


# --- hand-computed values ------------------------------------------------------------------------


def test_returns_are_relative_changes_over_1_5_and_20_bars() -> None:
    closes = wavy_closes(30)
    frame = features_of(make_bars(closes))
    i = 29
    assert frame["return_1d"].iloc[i] == pytest.approx(closes[i] / closes[i - 1] - 1)
    assert frame["return_5d"].iloc[i] == pytest.approx(closes[i] / closes[i - 5] - 1)
    assert frame["return_20d"].iloc[i] == pytest.approx(closes[i] / closes[i - 20] - 1)


def test_return_1d_on_a_three_bar_series() -> None:
    frame = features_of(make_bars([100.0, 110.0, 99.0]))
    assert math.isnan(frame["return_1d"].iloc[0])
    assert frame["return_1d"].iloc[1] == pytest.approx(0.10)  # 110 / 100 - 1
    assert frame["return_1d"].iloc[2] == pytest.approx(-0.10)  # 99 / 110 - 1


def test_volatility_is_sample_std_of_the_last_20_daily_returns() -> None:
    closes = wavy_closes(30)
    frame = features_of(make_bars(closes))
    returns = [closes[j] / closes[j - 1] - 1 for j in range(1, 30)]  # returns[k] belongs to bar k+1
    expected = statistics.stdev(returns[-20:])  # ddof=1
    assert frame["volatility_20d"].iloc[29] == pytest.approx(expected)
    # Bar 19 has only 19 returns behind it; bar 20 is the first with 20.
    assert math.isnan(frame["volatility_20d"].iloc[19])
    assert frame["volatility_20d"].iloc[20] == pytest.approx(statistics.stdev(returns[:20]))


def test_sma_ratios_on_closes_one_to_fifty() -> None:
    closes = [float(i) for i in range(1, 51)]
    frame = features_of(make_bars(closes))
    last = frame.iloc[-1]
    sma5 = (46 + 47 + 48 + 49 + 50) / 5  # 48
    sma20 = sum(range(31, 51)) / 20  # 40.5
    sma50 = sum(range(1, 51)) / 50  # 25.5
    assert last["sma_ratio_5_20"] == pytest.approx(sma5 / sma20 - 1)
    assert last["sma_ratio_20_50"] == pytest.approx(sma20 / sma50 - 1)
    assert math.isnan(frame["sma_ratio_20_50"].iloc[-2])  # only 49 closes behind it


def test_rsi_uses_simple_14_bar_means_of_gains_and_losses() -> None:
    # 15 closes, 14 changes alternating +2, -1: mean gain 14/14 = 1, mean loss 7/14 = 0.5.
    closes = [100.0]
    for k in range(14):
        closes.append(closes[-1] + (2.0 if k % 2 == 0 else -1.0))
    frame = features_of(make_bars(closes))
    relative_strength = 1.0 / 0.5
    assert frame["rsi_14"].iloc[14] == pytest.approx(100 - 100 / (1 + relative_strength))  # 66.67
    assert math.isnan(frame["rsi_14"].iloc[13])  # 13 changes only


def test_rsi_is_100_when_nothing_fell() -> None:
    frame = features_of(make_bars([100.0 + i for i in range(20)]))
    assert frame["rsi_14"].iloc[14:].tolist() == [100.0] * 6


def test_rsi_is_0_when_nothing_rose() -> None:
    frame = features_of(make_bars([100.0 - i for i in range(16)]))
    assert frame["rsi_14"].iloc[15] == pytest.approx(0.0)


def test_volume_zscore_against_the_trailing_20_bars() -> None:
    # 19 volumes of 100 then 120: mean 101, squared deviations 19 * 1 + 19**2 = 380,
    # sample variance 380 / 19 = 20, so z = (120 - 101) / sqrt(20).
    volumes = [100.0] * 19 + [120.0]
    frame = features_of(make_bars(wavy_closes(20), volumes=volumes))
    assert frame["volume_zscore_20"].iloc[19] == pytest.approx(19 / math.sqrt(20))
    assert math.isnan(frame["volume_zscore_20"].iloc[18])


def test_volume_zscore_is_zero_for_flat_volume() -> None:
    frame = features_of(make_bars(wavy_closes(25), volumes=[500.0] * 25))
    assert frame["volume_zscore_20"].iloc[19:].tolist() == [0.0] * 6


def test_range_ratio_is_high_minus_low_over_close() -> None:
    bars = make_bars([100.0, 104.0], spreads=[1.0, 3.0])
    frame = features_of(bars)
    # Bar 1: open 100, close 104, high 107, low 97 -> (107 - 97) / 104.
    assert frame["range_ratio"].iloc[1] == pytest.approx(10 / 104)
    assert frame["range_ratio"].iloc[0] == pytest.approx(2 / 100)


def test_columns_follow_the_feature_set_order() -> None:
    assert tuple(features_of(make_bars(wavy_closes(5))).columns) == FEATURE_SET.names


def test_latest_vector_is_the_newest_row_in_feature_set_order() -> None:
    bars = make_bars(wavy_closes(60))
    vector = latest_vector(bars)
    closes = [bar.close for bar in bars]
    assert vector.shape == (len(FEATURE_SET.names),)
    assert vector[FEATURE_SET.names.index("return_1d")] == pytest.approx(closes[-1] / closes[-2] - 1)
    assert vector[FEATURE_SET.names.index("range_ratio")] == pytest.approx(
        (bars[-1].high - bars[-1].low) / closes[-1]
    )


# --- history requirements ------------------------------------------------------------------------


def test_latest_vector_refuses_fewer_than_min_bars() -> None:
    bars = make_bars(wavy_closes(FEATURE_SET.min_bars - 1))
    with pytest.raises(InsufficientHistoryError, match=f"{FEATURE_SET.min_bars} needed"):
        latest_vector(bars)


def test_latest_vector_works_with_exactly_min_bars() -> None:
    vector = latest_vector(make_bars(wavy_closes(FEATURE_SET.min_bars)))
    assert not any(math.isnan(value) for value in vector)


# --- no look-ahead -------------------------------------------------------------------------------


def test_changing_a_later_bar_leaves_earlier_rows_unchanged() -> None:
    closes = wavy_closes(70)
    original = features_of(make_bars(closes))
    changed_at = 60
    altered = list(closes)
    altered[changed_at] *= 1.5
    volumes = [1000.0 + 10 * (i % 7) for i in range(70)]
    volumes[changed_at] = 50_000.0
    modified = features_of(make_bars(altered, volumes=volumes))
    pd.testing.assert_frame_equal(original.iloc[:changed_at], modified.iloc[:changed_at])
    # The change is visible from its own bar on, so the comparison above is not vacuous.
    assert modified["return_1d"].iloc[changed_at] != original["return_1d"].iloc[changed_at]


# --- training labels -----------------------------------------------------------------------------


def test_training_label_is_one_when_the_next_close_is_higher() -> None:
    closes = wavy_closes(70)
    closes[60] = closes[59]  # an unchanged next close is not "up"
    frame = training_frame(bars_frame(make_bars(closes)))
    position = {ts: i for i, ts in enumerate(START + timedelta(days=i) for i in range(70))}
    for ts, label in frame["up"].items():
        i = position[ts]
        assert label == (1 if closes[i + 1] > closes[i] else 0), f"bar {i}"
    assert frame["up"].loc[START + timedelta(days=59)] == 0


def test_training_frame_keeps_only_complete_rows_with_a_next_bar() -> None:
    count = 70
    frame = training_frame(bars_frame(make_bars(wavy_closes(count))))
    # Row 49 is the first with 50 closes behind it; the last row has no next close.
    assert len(frame) == count - FEATURE_SET.min_bars
    assert frame.index[0] == START + timedelta(days=FEATURE_SET.min_bars - 1)
    assert frame.index[-1] == START + timedelta(days=count - 2)
    assert not frame.isna().any().any()
