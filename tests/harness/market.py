"""New bars for a running service: the synthetic market's next bars, as `POST /market-data` takes them.

The seeded data directory holds the first `SEED_DAYS` bars of each symbol (seed `SEED`); the bar
of index `SEED_DAYS + k` is the k+1-th new one, the same bar `stockpred advance` would append.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx

from service.market.synthetic import synthetic_bars

SEED = 42
SEED_DAYS = 500


def new_bar(symbol: str, k: int = 0) -> dict[str, Any]:
    """The k-th bar after the seeded history of `symbol`, as JSON for `POST /market-data`."""
    bar = synthetic_bars(symbol, count=SEED_DAYS + k + 1, seed=SEED)[-1]
    return {
        "symbol": bar.symbol,
        "timestamp": bar.ts.isoformat(),
        "open": bar.open,
        "high": bar.high,
        "low": bar.low,
        "close": bar.close,
        "volume": bar.volume,
    }


def post_bar(base_url: str, bar: dict[str, Any], *, timeout: float = 30) -> httpx.Response:
    """Ingest one bar (from loopback, so no API key is needed when the service sets none)."""
    return httpx.post(f"{base_url}/market-data", json={"bars": [bar]}, timeout=timeout)


def bar_time(bar: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(bar["timestamp"])
