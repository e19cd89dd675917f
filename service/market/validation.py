"""The rules every bar obeys, wherever it comes from (API, CSV import, synthetic market)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from service.storage.market_bars import BarIn


def validate_bar(bar: BarIn) -> list[str]:
    """What is wrong with a bar, in words; empty when it is sound. Shared by the API and the CLI."""
    problems: list[str] = []
    prices = {"open": bar.open, "high": bar.high, "low": bar.low, "close": bar.close}
    problems += [f"{name} must be > 0 (got {value})" for name, value in prices.items() if not value > 0]
    if not bar.volume >= 0:
        problems.append(f"volume must be >= 0 (got {bar.volume})")
    if bar.high < bar.low:
        problems.append(f"high ({bar.high}) is below low ({bar.low})")
    if bar.high < max(bar.open, bar.close) or bar.low > min(bar.open, bar.close):
        problems.append("open and close must lie within [low, high]")
    return problems


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
