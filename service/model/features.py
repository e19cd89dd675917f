"""Feature definitions: the one place that says what the model sees.

Training and serving both call `feature_frame`, so a feature can never be computed one way
offline and another way online. Each feature only looks backwards from its bar.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from service.storage.tables import MarketBar


@dataclass(frozen=True)
class FeatureSet:
    name: str
    version: str
    names: tuple[str, ...]
    min_bars: int  # history needed before the newest bar has every feature defined
    lookback_bars: int  # bars fetched to compute the newest vector (min_bars plus slack)


FEATURE_SET = FeatureSet(
    name="price_momentum",
    version="1",
    names=(
        "return_1d",
        "return_5d",
        "return_20d",
        "volatility_20d",
        "sma_ratio_5_20",
        "sma_ratio_20_50",
        "rsi_14",
        "volume_zscore_20",
        "range_ratio",
    ),
    min_bars=50,
    lookback_bars=60,
)


class InsufficientHistoryError(ValueError):
    """Too few bars to compute every feature of the newest bar."""


def bars_frame(bars: Sequence[MarketBar]) -> pd.DataFrame:
    """Bars as a DataFrame indexed by timestamp, oldest first."""
    frame = pd.DataFrame(
        {
            "ts": [bar.ts for bar in bars],
            "open": [bar.open for bar in bars],
            "high": [bar.high for bar in bars],
            "low": [bar.low for bar in bars],
            "close": [bar.close for bar in bars],
            "volume": [bar.volume for bar in bars],
        }
    )
    return frame.set_index("ts").sort_index()


def feature_frame(bars: pd.DataFrame) -> pd.DataFrame:
    """Every feature for every bar; rows without enough history hold NaN."""
    close = bars["close"].astype(float)
    volume = bars["volume"].astype(float)
    daily_return = close.pct_change()
    features = pd.DataFrame(index=bars.index)
    features["return_1d"] = daily_return
    features["return_5d"] = close.pct_change(5)
    features["return_20d"] = close.pct_change(20)
    features["volatility_20d"] = daily_return.rolling(20).std()
    features["sma_ratio_5_20"] = close.rolling(5).mean() / close.rolling(20).mean() - 1
    features["sma_ratio_20_50"] = close.rolling(20).mean() / close.rolling(50).mean() - 1
    features["rsi_14"] = relative_strength_index(close, window=14)
    features["volume_zscore_20"] = rolling_zscore(volume, window=20)
    features["range_ratio"] = (bars["high"] - bars["low"]) / close
    return features[list(FEATURE_SET.names)]


def relative_strength_index(close: pd.Series, *, window: int) -> pd.Series:
    """Cutler's RSI (simple moving averages of gains and losses), 0..100; 100 when nothing fell."""
    change = close.diff()
    gains = change.clip(lower=0).rolling(window).mean()
    losses = (-change).clip(lower=0).rolling(window).mean()
    rsi = 100 - 100 / (1 + gains / losses)
    return rsi.where(losses != 0, 100.0).where(gains.notna())


def rolling_zscore(values: pd.Series, *, window: int) -> pd.Series:
    """How many standard deviations the value is from its trailing mean (0 when flat)."""
    mean = values.rolling(window).mean()
    std = values.rolling(window).std()
    return ((values - mean) / std).where(std != 0, 0.0).where(mean.notna())


def latest_vector(bars: Sequence[MarketBar]) -> np.ndarray:
    """The feature vector of the newest bar, in `FEATURE_SET.names` order."""
    if len(bars) < FEATURE_SET.min_bars:
        raise InsufficientHistoryError(
            f"{len(bars)} bars available, {FEATURE_SET.min_bars} needed to compute features"
        )
    row = feature_frame(bars_frame(bars)).iloc[-1]
    if row.isna().any():
        raise InsufficientHistoryError(f"features undefined: {list(row[row.isna()].index)}")
    vector: np.ndarray = row.to_numpy(dtype=float)
    return vector


def training_frame(bars: pd.DataFrame) -> pd.DataFrame:
    """Features plus the label `up` (1 when the next close is higher) for every complete row."""
    frame = feature_frame(bars)
    next_close = bars["close"].shift(-1)
    frame["up"] = (next_close > bars["close"]).astype(int)
    frame = frame[next_close.notna()]
    return frame.dropna()
