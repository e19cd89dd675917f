"""Feature definitions: the one place that says what the model sees.

Training and serving both call `feature_frame`, so a feature can never be computed one way
offline and another way online. Each feature only looks backwards from its bar.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from service.market.validation import validate_bar
from service.storage.market_bars import BarIn
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


class UnusableFeaturesError(InsufficientHistoryError):
    """A feature of the newest bar is not a finite number: a bar in the window is absurd.

    Such a vector never reaches the model. It is a kind of missing data (the prediction path
    counts it as `no_data`); the answer names the feature and the bar, and re-posting a corrected
    bar heals the symbol at once.
    """

    def __init__(self, *, symbol: str, feature: str, bar: datetime, reason: str) -> None:
        self.symbol = symbol
        self.feature = feature
        self.bar = bar
        super().__init__(
            f"feature {feature} of {symbol} is not a finite number: bar {bar.isoformat()} {reason}; "
            "re-post a corrected bar to heal the symbol"
        )


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
    unusable = [str(name) for name, value in row.items() if not math.isfinite(float(value))]
    if unusable:
        raise _unusable(bars, unusable[0])
    vector: np.ndarray = row.to_numpy(dtype=float)
    return vector


def _unusable(bars: Sequence[MarketBar], feature: str) -> UnusableFeaturesError:
    """Blame the newest bar of the window that breaks the bar rules (else the newest bar)."""
    for bar in reversed(bars):
        problems = validate_bar(
            BarIn(bar.symbol, bar.ts, bar.open, bar.high, bar.low, bar.close, bar.volume), now=bar.ts
        )
        if problems:
            return UnusableFeaturesError(
                symbol=bar.symbol, feature=feature, bar=bar.ts, reason="is invalid: " + "; ".join(problems)
            )
    newest = bars[-1]
    return UnusableFeaturesError(
        symbol=newest.symbol, feature=feature, bar=newest.ts, reason="yields it from valid bars"
    )


def training_frame(bars: pd.DataFrame) -> pd.DataFrame:
    """Features plus the label `up` (1 when the next close is higher) for every complete row."""
    frame = feature_frame(bars)
    next_close = bars["close"].shift(-1)
    frame["up"] = (next_close > bars["close"]).astype(int)
    frame = frame[next_close.notna()]
    return frame.dropna()
