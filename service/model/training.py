"""Training: build the dataset from stored bars, fit, evaluate on a time-ordered split.

Nothing here talks to MLflow; `model_registry` logs and registers what `train` returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import GradientBoostingClassifier

from service.model.features import FEATURE_SET, bars_frame, training_frame
from service.monitoring.drift import ReferenceDistribution, reference_distribution
from service.storage.database import Database
from service.storage.market_bars import all_bars

DEFAULT_PARAMS: dict[str, Any] = {
    "n_estimators": 150,
    "max_depth": 3,
    "learning_rate": 0.05,
    "subsample": 0.8,
}
VALIDATION_SHARE = 0.2


def lag1_autocorrelation(rows: pd.DataFrame) -> dict[str, float]:
    """Per feature, the median over symbols of the bar-to-bar autocorrelation (for drift gating)."""
    per_symbol = [
        group.sort_values("ts")[list(FEATURE_SET.names)].apply(lambda column: column.autocorr(1))
        for _, group in rows.groupby("symbol")
        if len(group) > 2
    ]
    medians = pd.concat(per_symbol, axis=1).median(axis=1).fillna(0.0)
    return {name: float(medians[name]) for name in FEATURE_SET.names}


class NotEnoughDataError(ValueError):
    """Too few bars to train a model."""


@dataclass(frozen=True)
class TrainedModel:
    estimator: GradientBoostingClassifier
    feature_names: tuple[str, ...]
    symbols: tuple[str, ...]
    params: dict[str, Any]
    train_accuracy: float
    validation_accuracy: float
    train_rows: int
    validation_rows: int
    importances: dict[str, float]
    reference: ReferenceDistribution
    trained_at: datetime
    validation_start: datetime


def build_dataset(database: Database, *, symbols: Sequence[str]) -> pd.DataFrame:
    """One row per (symbol, bar): features, label `up`, and the bar time for the split."""
    with database.session() as session:
        bars = all_bars(session, symbols=symbols)
    frames = []
    for symbol in symbols:
        own = [bar for bar in bars if bar.symbol == symbol]
        if len(own) <= FEATURE_SET.min_bars:
            continue
        frame = training_frame(bars_frame(own))
        frame["symbol"] = symbol
        frames.append(frame)
    if not frames:
        raise NotEnoughDataError(f"no symbol of {list(symbols)} has more than {FEATURE_SET.min_bars} bars")
    return pd.concat(frames).rename_axis("ts").reset_index().sort_values(["ts", "symbol"])


def train(dataset: pd.DataFrame, *, seed: int, params: dict[str, Any] | None = None) -> TrainedModel:
    """Fit on the older 80 % of bar times, validate on the newest 20 % (no look-ahead)."""
    params = {**DEFAULT_PARAMS, **(params or {})}
    times = np.sort(dataset["ts"].unique())
    if len(times) < 20:
        raise NotEnoughDataError(f"{len(times)} distinct bar times; at least 20 are needed")
    split_time = times[int(len(times) * (1 - VALIDATION_SHARE))]
    train_rows = dataset[dataset["ts"] < split_time]
    validation_rows = dataset[dataset["ts"] >= split_time]
    names = list(FEATURE_SET.names)
    x_train, y_train = train_rows[names].to_numpy(float), train_rows["up"].to_numpy(int)
    x_val, y_val = validation_rows[names].to_numpy(float), validation_rows["up"].to_numpy(int)

    estimator = GradientBoostingClassifier(random_state=seed, **params)
    estimator.fit(x_train, y_train)
    confidence = estimator.predict_proba(x_val).max(axis=1)
    return TrainedModel(
        estimator=estimator,
        feature_names=FEATURE_SET.names,
        symbols=tuple(sorted(dataset["symbol"].unique())),
        params=params,
        train_accuracy=float(estimator.score(x_train, y_train)),
        validation_accuracy=float(estimator.score(x_val, y_val)),
        train_rows=len(train_rows),
        validation_rows=len(validation_rows),
        importances={
            name: float(value) for name, value in zip(names, estimator.feature_importances_, strict=True)
        },
        # The reference is what the model saw in training; its confidence is on held-out rows.
        reference=reference_distribution(x_train, names, confidence, lag1_autocorrelation(train_rows)),
        trained_at=datetime.now(UTC),
        validation_start=pd.Timestamp(split_time).to_pydatetime(),
    )
