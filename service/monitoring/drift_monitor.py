"""Drift of each symbol's served features (and confidence) against the training reference.

Runs in the background and publishes gauges; it touches the request path only through
`DriftMonitor.observe`, which appends to a bounded deque.

Drift windows hold one feature vector per *bar* a symbol was served for, not one per request: a
daily symbol is served the same vector all day, and counting it a thousand times would look like
a collapsed distribution. The window is pre-filled at start-up with the vectors of the symbol's
newest bars (what the service would have served for them), so drift is known from the start.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from service.background import Leadership, PeriodicTask
from service.model.features import FEATURE_SET, bars_frame, feature_frame
from service.model.manager import ModelManager
from service.model.served_model import ServedModel
from service.monitoring.drift import psi
from service.serving.predictions import PredictionResult
from service.storage.database import Database
from service.storage.market_bars import recent_bars
from service.telemetry.current_state import Point
from service.telemetry.providers import Telemetry


@dataclass(frozen=True)
class DriftScore:
    symbol: str
    model_version: str
    score: float | None  # the largest PSI among features with enough effective samples
    features: dict[str, float]
    scored_features: tuple[str, ...]
    prediction: float | None
    window: int


class DriftMonitor:
    """PSI of each symbol's recent served features (and confidence) against the training reference."""

    def __init__(
        self,
        *,
        database: Database,
        models: ModelManager,
        telemetry: Telemetry,
        window_bars: int,
        min_window: int,
        min_effective_samples: float,
        interval_seconds: float,
        leader: Leadership | None = None,
    ) -> None:
        self._database = database
        self._models = models
        self._metrics = telemetry.metrics
        self._min_window = min_window
        self._min_effective = min_effective_samples
        self._window_bars = window_bars
        self._windows: dict[str, deque[tuple[datetime, np.ndarray]]] = {}
        self._lock = threading.Lock()
        self._task = PeriodicTask("drift-monitor", interval_seconds, self.refresh, leader=leader)
        self.latest: dict[str, DriftScore] = {}

    def prefill(self, symbols: tuple[str, ...]) -> None:
        """Fill each window with the feature vectors of the symbol's newest bars."""
        for symbol in symbols:
            with self._database.session() as session:
                bars = recent_bars(session, symbol=symbol, limit=self._window_bars + FEATURE_SET.min_bars)
            if len(bars) < FEATURE_SET.min_bars:
                continue
            frame = feature_frame(bars_frame(bars)).dropna().tail(self._window_bars)
            with self._lock:
                window = self._window_for(symbol)
                for ts, row in frame.iterrows():
                    window.append((ts.to_pydatetime(), row.to_numpy(dtype=float)))

    def observe(self, result: PredictionResult, _model: ServedModel) -> None:
        """Called after each prediction; keeps one entry per (symbol, bar)."""
        with self._lock:
            window = self._window_for(result.symbol)
            if window and window[-1][0] >= result.as_of:
                return
            window.append((result.as_of, np.asarray(list(result.features.values()), dtype=float)))

    def _window_for(self, symbol: str) -> deque[tuple[datetime, np.ndarray]]:
        return self._windows.setdefault(symbol, deque(maxlen=self._window_bars))

    def refresh(self) -> None:
        model = self._models.current
        if model is None or model.reference is None:
            return
        with self._lock:
            windows = {symbol: np.array([v for _, v in w]) for symbol, w in self._windows.items()}
        scores = {
            symbol: self._score(symbol, served, model)
            for symbol, served in windows.items()
            if symbol in model.symbols and len(served) >= self._min_window
        }
        self._publish(scores.values())
        self.latest = scores

    def _score(self, symbol: str, served: np.ndarray, model: ServedModel) -> DriftScore:
        assert model.reference is not None
        per_feature = {
            name: psi(model.reference.features[name], served[:, i])
            for i, name in enumerate(model.feature_names)
            if name in model.reference.features
        }
        reference = model.reference
        scored = tuple(
            name
            for name in per_feature
            if reference.effective_samples(name, len(served)) >= self._min_effective
        )
        confidence = model.estimator.predict_proba(served).max(axis=1)
        return DriftScore(
            symbol=symbol,
            model_version=model.version,
            score=max((per_feature[name] for name in scored), default=None),
            features=per_feature,
            scored_features=scored,
            prediction=psi(model.reference.confidence, confidence),
            window=len(served),
        )

    def _publish(self, scores: Iterable[DriftScore]) -> None:
        """Replace every drift series: a symbol without a score this round reports none."""
        overall: list[Point] = []
        prediction: list[Point] = []
        features: list[Point] = []
        for score in scores:
            labels = {"symbol": score.symbol, "model_version": score.model_version}
            if score.score is not None:
                overall.append((labels, score.score))
            if score.prediction is not None:
                prediction.append((labels, score.prediction))
            features += [({**labels, "feature": name}, value) for name, value in score.features.items()]
        self._metrics.model_drift_score.replace(overall)
        self._metrics.model_prediction_drift.replace(prediction)
        self._metrics.model_feature_drift.replace(features)

    def start(self) -> None:
        self._task.start()

    def stop(self) -> None:
        self._task.stop()
