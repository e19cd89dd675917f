"""Ingesting market bars: validate the whole batch, store it in one transaction, then react.

After the bars are committed, the symbols' cached features are invalidated and predictions whose
outcome the new bars reveal are resolved. A rejected batch writes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from service.market.validation import DEFAULT_LIMITS, BarLimits, duplicate_keys, validate_bar
from service.serving.feature_store import FeatureStore
from service.serving.predictions import PredictionService
from service.storage.database import Database
from service.storage.market_bars import BarIn, upsert_bars


class InvalidBatchError(ValueError):
    """The batch breaks a rule; `problems` says which bars and why."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            "; ".join(problems[:20]) + (f" (and {len(problems) - 20} more)" if len(problems) > 20 else "")
        )


@dataclass(frozen=True)
class IngestResult:
    inserted: int
    updated: int
    symbols: list[str]
    resolved_predictions: int


def check_batch(bars: Sequence[BarIn], limits: BarLimits = DEFAULT_LIMITS) -> None:
    """Every problem of the batch at once, so a caller can fix them in one go."""
    now = datetime.now(UTC)
    problems = [
        f"bar {index} ({bar.symbol}@{bar.ts.isoformat()}): {problem}"
        for index, bar in enumerate(bars)
        for problem in validate_bar(bar, limits, now=now)
    ]
    problems += [f"duplicated bar in batch: {key}" for key in duplicate_keys(bars)]
    if problems:
        raise InvalidBatchError(problems)


def ingest(
    bars: Sequence[BarIn],
    *,
    database: Database,
    limits: BarLimits = DEFAULT_LIMITS,
    feature_store: FeatureStore | None = None,
    predictions: PredictionService | None = None,
) -> IngestResult:
    """Validate, store, then invalidate the symbols' cached features and resolve what is due.

    Every writer (API, CLI import, advance, seed) comes through here, so caches never serve
    features of bars that have been replaced.
    """
    check_batch(bars, limits)
    if predictions is not None:
        predictions.flush_log()  # this process's spooled rows first, so the bars resolve them here
    with database.session() as session:
        stored = upsert_bars(session, bars=bars)
    symbols = sorted({bar.symbol for bar in bars})
    if feature_store is not None:
        feature_store.invalidate(symbols)
    resolved = predictions.resolve_due(symbols) if predictions is not None else 0
    return IngestResult(stored.inserted, stored.updated, symbols, resolved)
