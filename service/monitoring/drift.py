"""Population Stability Index between a training reference and a window of served values.

Reference: decile bin edges of each feature (and of the model's confidence) in the training data
and the share of training rows in each bin. Served values are binned with the same edges; bins
empty on either side are floored at EPSILON so the log stays finite.

    PSI = sum over bins of (served_share - reference_share) * ln(served_share / reference_share)

Usual reading: < 0.1 stable, 0.1-0.2 moderate shift, > 0.2 significant shift (the seed's alert),
> 0.25 act now (retrain or investigate).

PSI assumes independent samples. Slow features (20- and 50-day windows) are strongly
autocorrelated from bar to bar (lag-1 autocorrelation 0.95-1.0 here), so a window of 250 bars
holds only a handful of independent values and their PSI is mostly noise (measured: median 0.55,
max 1.5 on unshifted data). The reference therefore keeps each feature's lag-1 autocorrelation,
and only features whose window holds enough *effective* samples, n (1 - rho) / (1 + rho), count
towards the alerted drift score; every feature's PSI is still exported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

EPSILON = 1e-4
QUANTILES = np.linspace(0, 1, 11)  # deciles: 9 inner edges, 10 bins


@dataclass(frozen=True)
class Histogram:
    """Inner bin edges (ascending) and the reference share in each of len(edges)+1 bins."""

    edges: tuple[float, ...]
    shares: tuple[float, ...]

    def to_dict(self) -> dict[str, list[float]]:
        return {"edges": list(self.edges), "shares": list(self.shares)}

    @classmethod
    def from_dict(cls, data: dict[str, list[float]]) -> Histogram:
        return cls(edges=tuple(data["edges"]), shares=tuple(data["shares"]))


@dataclass(frozen=True)
class ReferenceDistribution:
    features: dict[str, Histogram]
    confidence: Histogram
    autocorrelation: dict[str, float]  # lag-1, per feature, median over the training symbols

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": {name: h.to_dict() for name, h in self.features.items()},
            "confidence": self.confidence.to_dict(),
            "autocorrelation": self.autocorrelation,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReferenceDistribution:
        return cls(
            features={name: Histogram.from_dict(h) for name, h in data["features"].items()},
            confidence=Histogram.from_dict(data["confidence"]),
            autocorrelation={name: float(v) for name, v in data.get("autocorrelation", {}).items()},
        )

    def effective_samples(self, feature: str, window: int) -> float:
        """Independent samples a window of `window` consecutive bars is worth for this feature."""
        rho = min(max(self.autocorrelation.get(feature, 0.0), 0.0), 0.999)
        return window * (1 - rho) / (1 + rho)


def histogram(values: np.ndarray) -> Histogram:
    """Decile edges of `values` and the share of `values` in each bin (≈ 0.1 each, less with ties)."""
    inner = np.unique(np.quantile(values, QUANTILES[1:-1]))
    return Histogram(edges=tuple(float(e) for e in inner), shares=tuple(bin_shares(values, inner)))


def bin_shares(values: np.ndarray, edges: Sequence[float] | np.ndarray) -> list[float]:
    counts = np.bincount(np.searchsorted(np.asarray(edges), values, side="right"), minlength=len(edges) + 1)
    return [float(c) for c in counts / max(len(values), 1)]


def psi(reference: Histogram, served: np.ndarray) -> float:
    expected = np.maximum(np.asarray(reference.shares), EPSILON)
    actual = np.maximum(np.asarray(bin_shares(served, reference.edges)), EPSILON)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def reference_distribution(
    features: np.ndarray,
    names: Sequence[str],
    confidence: np.ndarray,
    autocorrelation: dict[str, float],
) -> ReferenceDistribution:
    return ReferenceDistribution(
        features={name: histogram(features[:, i]) for i, name in enumerate(names)},
        confidence=histogram(confidence),
        autocorrelation=autocorrelation,
    )
