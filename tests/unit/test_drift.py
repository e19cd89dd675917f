"""Population Stability Index and decile references, checked against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.monitoring.drift import (
    EPSILON,
    Histogram,
    ReferenceDistribution,
    bin_shares,
    histogram,
    psi,
    reference_distribution,
)

# Three bins: (-inf, 1), [1, 2), [2, inf) with a quarter, a half and a quarter of the reference.
REFERENCE = Histogram(edges=(1.0, 2.0), shares=(0.25, 0.5, 0.25))


def test_epsilon_is_the_documented_floor() -> None:
    assert EPSILON == 1e-4


def test_decile_edges_of_zero_to_99() -> None:
    # np.quantile interpolates linearly: the q-quantile of 0..99 is 99 * q.
    ref = histogram(np.arange(100, dtype=float))
    assert ref.edges == pytest.approx([99 * k / 10 for k in range(1, 10)])
    assert ref.shares == pytest.approx([0.1] * 10)


def test_values_on_an_edge_fall_into_the_upper_bin() -> None:
    assert bin_shares(np.array([0.5, 1.0, 2.0, 2.0]), [1.0, 2.0]) == [0.25, 0.25, 0.5]


def test_psi_of_identical_distributions_is_zero() -> None:
    values = np.random.default_rng(7).normal(size=2000)
    assert psi(histogram(values), values) == pytest.approx(0.0, abs=1e-12)


def test_psi_of_a_known_shift_matches_the_hand_computation() -> None:
    served = np.array([0.5, 0.5, 1.5, 2.5])  # shares 0.5, 0.25, 0.25
    expected = (0.5 - 0.25) * math.log(0.5 / 0.25) + (0.25 - 0.5) * math.log(0.25 / 0.5) + 0.0
    assert expected == pytest.approx(0.5 * math.log(2))
    assert psi(REFERENCE, served) == pytest.approx(expected)


def test_empty_served_bin_is_floored_at_epsilon() -> None:
    served = np.array([1.5, 1.5, 2.5, 2.5])  # shares 0, 0.5, 0.5: the first bin is empty
    expected = (EPSILON - 0.25) * math.log(EPSILON / 0.25) + 0.0 + (0.5 - 0.25) * math.log(0.5 / 0.25)
    value = psi(REFERENCE, served)
    assert math.isfinite(value)
    assert value == pytest.approx(expected)


def test_empty_reference_bin_is_floored_at_epsilon() -> None:
    reference = Histogram(edges=(1.0,), shares=(0.0, 1.0))
    served = np.array([0.0, 5.0])  # half lands where the reference had nothing
    expected = (0.5 - EPSILON) * math.log(0.5 / EPSILON) + (0.5 - 1.0) * math.log(0.5 / 1.0)
    assert psi(reference, served) == pytest.approx(expected)


def test_psi_grows_with_the_size_of_the_shift() -> None:
    rng = np.random.default_rng(11)
    reference = histogram(rng.normal(size=5000))
    small = psi(reference, rng.normal(loc=0.1, size=5000))
    large = psi(reference, rng.normal(loc=1.0, size=5000))
    assert small < 0.1  # "stable" by the usual reading
    assert large > 0.2  # "significant shift": the seed's alert threshold


def test_constant_values_collapse_to_one_edge() -> None:
    ref = histogram(np.full(50, 3.0))
    assert ref.edges == (3.0,)
    assert ref.shares == (0.0, 1.0)  # every value sits on the edge, so in the upper bin
    assert psi(ref, np.full(10, 3.0)) == pytest.approx(0.0)


def test_reference_distribution_has_one_histogram_per_feature_and_round_trips() -> None:
    rng = np.random.default_rng(3)
    features = rng.normal(size=(400, 2))
    confidence = rng.uniform(0.5, 1.0, size=100)
    ref = reference_distribution(features, ["a", "b"], confidence, {"a": 0.2, "b": 0.9})
    assert set(ref.features) == {"a", "b"}
    assert ref.features["b"] == histogram(features[:, 1])
    assert ref.confidence == histogram(confidence)
    assert ReferenceDistribution.from_dict(ref.to_dict()) == ref


def test_reference_without_autocorrelation_loads_as_independent_samples() -> None:
    """Models registered before autocorrelation was recorded still load: every sample counts."""
    ref = Histogram(edges=(1.0,), shares=(0.5, 0.5))
    old = {"features": {"a": ref.to_dict()}, "confidence": ref.to_dict()}
    loaded = ReferenceDistribution.from_dict(old)
    assert loaded.autocorrelation == {}
    assert loaded.effective_samples("a", 250) == pytest.approx(250)


@pytest.mark.parametrize(
    ("rho", "expected"),
    [
        (0.5, 90 * 0.5 / 1.5),  # n (1 - rho) / (1 + rho) = 30
        (0.0, 90.0),
        (-0.4, 90.0),  # negative autocorrelation is not credited with extra samples
        (1.0, 90 * 0.001 / 1.999),  # capped below 1 so a window is never worth nothing
    ],
)
def test_effective_samples_of_an_autocorrelated_window(rho: float, expected: float) -> None:
    flat = Histogram(edges=(0.0,), shares=(0.5, 0.5))
    ref = ReferenceDistribution(features={"x": flat}, confidence=flat, autocorrelation={"x": rho})
    assert ref.effective_samples("x", 90) == pytest.approx(expected)
