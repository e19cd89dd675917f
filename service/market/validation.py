"""The rules every bar obeys, wherever it comes from (API, CSV import, synthetic market).

A bar that breaks them is never stored: absurd but well-formed numbers (1e300, NaN, a volume of
2.5) would otherwise poison the symbol's feature window for 60 bars. The same checks decide
whether a stored bar may resolve a prediction (`is_sound`), for rows written before they existed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from service.config import SYMBOL_PATTERN, Settings
from service.storage.market_bars import BarIn

PRICE_FIELDS = ("open", "high", "low", "close")


@dataclass(frozen=True)
class BarLimits:
    """Upper bounds for a bar (the defaults are the settings' defaults)."""

    max_price: float = 1e6
    max_volume: float = 1e12
    max_future_skew: timedelta = timedelta(minutes=5)

    @classmethod
    def from_settings(cls, settings: Settings) -> BarLimits:
        return cls(
            max_price=settings.MAX_PRICE,
            max_volume=float(settings.MAX_VOLUME),
            max_future_skew=timedelta(seconds=settings.MAX_FUTURE_SKEW_SECONDS),
        )


DEFAULT_LIMITS = BarLimits()


def validate_bar(bar: BarIn, limits: BarLimits = DEFAULT_LIMITS, *, now: datetime | None = None) -> list[str]:
    """What is wrong with a bar, in words; empty when it is sound. Shared by the API and the CLI."""
    problems = [] if SYMBOL_PATTERN.match(bar.symbol) else [f"{bar.symbol!r} is not a ticker symbol"]
    problems += [problem for name in PRICE_FIELDS for problem in _price_problems(name, bar, limits)]
    problems += _volume_problems(bar.volume, limits)
    if not problems:  # ordering rules only mean something between sound prices
        if bar.high < bar.low:
            problems.append(f"high ({bar.high}) is below low ({bar.low})")
        if bar.high < max(bar.open, bar.close) or bar.low > min(bar.open, bar.close):
            problems.append("open and close must lie within [low, high]")
    latest = (now or datetime.now(UTC)) + limits.max_future_skew
    if _aware(bar.ts) > latest:
        problems.append(
            f"timestamp {bar.ts.isoformat()} is in the future (latest accepted: {latest:%Y-%m-%dT%H:%M:%SZ})"
        )
    return problems


def is_sound(*, close: float, limits: BarLimits = DEFAULT_LIMITS) -> bool:
    """Whether a stored close may decide an outcome (finite, positive, within bounds)."""
    return math.isfinite(close) and 0 < close <= limits.max_price


def _price_problems(name: str, bar: BarIn, limits: BarLimits) -> list[str]:
    value = getattr(bar, name)
    if not math.isfinite(value):
        return [f"{name} must be a finite number (got {value})"]
    if not value > 0:
        return [f"{name} must be > 0 (got {value})"]
    if value > limits.max_price:
        return [f"{name} must be <= {limits.max_price:g} (got {value:g})"]
    return []


def _volume_problems(volume: float, limits: BarLimits) -> list[str]:
    if not math.isfinite(volume):
        return [f"volume must be a finite number (got {volume})"]
    if not volume >= 0:
        return [f"volume must be >= 0 (got {volume})"]
    if not float(volume).is_integer():
        return [f"volume must be a whole number (got {volume})"]
    if volume > limits.max_volume:
        return [f"volume must be <= {limits.max_volume:g} (got {volume:g})"]
    return []


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def duplicate_keys(bars: Sequence[BarIn]) -> list[str]:
    """(symbol, timestamp) pairs that occur more than once in one batch."""
    seen: set[tuple[str, datetime]] = set()
    duplicates: list[str] = []
    for bar in bars:
        key = (bar.symbol, bar.ts)
        if key in seen:
            duplicates.append(f"{bar.symbol}@{bar.ts.isoformat()}")
        seen.add(key)
    return duplicates
