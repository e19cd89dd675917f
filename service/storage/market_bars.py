"""Queries on market bars: idempotent upserts (the only dialect-specific SQL) and reads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from service.storage.tables import MarketBar, as_utc


@dataclass(frozen=True)
class BarIn:
    """A validated bar, ready to store."""

    symbol: str
    ts: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float


@dataclass(frozen=True)
class UpsertResult:
    inserted: int
    updated: int


def upsert_bars(session: Session, *, bars: Sequence[BarIn]) -> UpsertResult:
    """Insert bars, replacing any already stored at the same (symbol, ts): ingestion is idempotent."""
    if not bars:
        return UpsertResult(0, 0)
    existing = _existing_keys(session, bars)
    rows = [
        {
            "symbol": bar.symbol,
            "ts": as_utc(bar.ts),
            "open": bar.open,
            "high": bar.high,
            "low": bar.low,
            "close": bar.close,
            "volume": bar.volume,
        }
        for bar in bars
    ]
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    for chunk_start in range(0, len(rows), 500):
        statement = insert(MarketBar).values(rows[chunk_start : chunk_start + 500])
        statement = statement.on_conflict_do_update(
            index_elements=["symbol", "ts"],
            set_={name: statement.excluded[name] for name in ("open", "high", "low", "close", "volume")},
        )
        session.execute(statement)
    updated = len(existing)
    return UpsertResult(inserted=len(rows) - updated, updated=updated)


def _existing_keys(session: Session, bars: Sequence[BarIn]) -> set[tuple[str, datetime]]:
    keys: set[tuple[str, datetime]] = set()
    by_symbol: dict[str, list[datetime]] = {}
    for bar in bars:
        by_symbol.setdefault(bar.symbol, []).append(as_utc(bar.ts))
    for symbol, stamps in by_symbol.items():
        query = select(MarketBar.ts).where(
            MarketBar.symbol == symbol, MarketBar.ts >= min(stamps), MarketBar.ts <= max(stamps)
        )
        wanted = set(stamps)
        keys.update((symbol, ts) for ts in session.scalars(query) if ts in wanted)
    return keys


def recent_bars(session: Session, *, symbol: str, limit: int) -> list[MarketBar]:
    """The newest `limit` bars of a symbol, oldest first."""
    query = select(MarketBar).where(MarketBar.symbol == symbol).order_by(MarketBar.ts.desc()).limit(limit)
    return list(reversed(session.scalars(query).all()))


def all_bars(session: Session, *, symbols: Sequence[str]) -> list[MarketBar]:
    query = select(MarketBar).where(MarketBar.symbol.in_(symbols)).order_by(MarketBar.symbol, MarketBar.ts)
    return list(session.scalars(query).all())


def count_bars(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(MarketBar)) or 0)


def symbols_with_bars(session: Session) -> list[str]:
    return list(session.scalars(select(MarketBar.symbol).distinct().order_by(MarketBar.symbol)))


def last_bar(session: Session, *, symbol: str) -> MarketBar | None:
    query = select(MarketBar).where(MarketBar.symbol == symbol).order_by(MarketBar.ts.desc()).limit(1)
    return session.scalars(query).first()
