"""A loaded model version and what serving needs to know about it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from service.monitoring.drift import ReferenceDistribution


@dataclass(frozen=True)
class ServedModel:
    """A loaded model version with what the service needs to know about it."""

    name: str
    version: str
    estimator: Any
    feature_names: tuple[str, ...]
    feature_set_version: str
    symbols: tuple[str, ...]
    trained_at: str
    validation_accuracy: float
    importances: dict[str, float]
    reference: ReferenceDistribution | None
    source: Literal["registry", "cache"]

    def probability_up(self, vector: np.ndarray) -> float:
        probabilities = self.estimator.predict_proba(vector.reshape(1, -1))[0]
        return float(probabilities[list(self.estimator.classes_).index(1)])
