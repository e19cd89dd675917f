"""SQL storage: market bars and the prediction log.

SQLAlchemy 2 ORM models plus the few queries the service needs. Everything here runs on SQLite
(the embedded default) and PostgreSQL (production); dialect differences are confined to
`upsert_bars`. The schema itself is owned by the Alembic migrations in `service/migrations`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    case,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

PENDING = "pending"
RESOLVED = "resolved"


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite forgets the zone otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return as_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return as_utc(value)


def as_utc(value: datetime) -> datetime:
    """Naive datetimes are taken as UTC; aware ones are converted."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class MarketBar(Base):
    """One OHLCV bar of one symbol; (symbol, ts) is the natural key."""

    __tablename__ = "market_bars"
    __table_args__ = (UniqueConstraint("symbol", "ts", name="uq_market_bars_symbol_ts"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    symbol: Mapped[str] = mapped_column(String(16), nullable=False)
    ts: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    open: Mapped[float] = mapped_column(Float, nullable=False)
    high: Mapped[float] = mapped_column(Float, nullable=False)
    low: Mapped[float] = mapped_column(Float, nullable=False)
    close: Mapped[float] = mapped_column(Float, nullable=False)
    volume: Mapped[float] = mapped_column(Float, nullable=False)


class Prediction(Base):
    """A served prediction, later resolved against the realised next bar or explicit feedback."""

    __tablename__ = "predictions"
    __table_args__ = (
        Index("ix_predictions_symbol_status", "symbol", "status"),
        Index("ix_predictions_resolved_at", "resolved_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    symbol: Mapped[str] = mapped_column(String(16), nullable=False)
    as_of: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)  # last bar the features used
    direction: Mapped[str] = mapped_column(String(4), nullable=False)
    confidence: Mapped[float] = mapped_column(Float, nullable=False)
    probability_up: Mapped[float] = mapped_column(Float, nullable=False)
    model_name: Mapped[str] = mapped_column(String(128), nullable=False)
    model_version: Mapped[str] = mapped_column(String(32), nullable=False)
    feature_set_version: Mapped[str] = mapped_column(String(32), nullable=False)
    trace_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=PENDING)
    actual_direction: Mapped[str | None] = mapped_column(String(4), nullable=True)
    correct: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    resolution_source: Mapped[str | None] = mapped_column(String(16), nullable=True)
    resolving_bar_id: Mapped[int | None] = mapped_column(
        ForeignKey("market_bars.id", ondelete="SET NULL"), nullable=True
    )


# --- engine and sessions -------------------------------------------------------------------------


def make_engine(database_url: str) -> Engine:
    """An engine tuned per backend: WAL and a busy timeout for SQLite, pre-ping for PostgreSQL."""
    if database_url.startswith("sqlite"):
        engine = create_engine(database_url, connect_args={"check_same_thread": False, "timeout": 15})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(database_url, pool_pre_ping=True, pool_size=10, max_overflow=10, pool_timeout=5)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Database:
    """Engine plus session factory; one per process, created in the app's lifespan."""

    def __init__(self, database_url: str) -> None:
        self.url = database_url
        self.engine = make_engine(database_url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on any error."""
        with self._sessions.begin() as session:
            yield session

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    def dispose(self) -> None:
        self.engine.dispose()


# --- market bars ---------------------------------------------------------------------------------


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


# --- predictions ---------------------------------------------------------------------------------


def new_prediction_id() -> str:
    return str(uuid.uuid4())


def add_prediction(session: Session, prediction: Prediction) -> None:
    session.add(prediction)


def get_prediction(session: Session, *, prediction_id: str) -> Prediction | None:
    return session.get(Prediction, prediction_id)


def resolve_due_predictions(session: Session, *, symbols: Sequence[str], now: datetime) -> int:
    """Resolve pending predictions whose next bar has arrived: right if it moved as predicted.

    A prediction made with bars up to `as_of` is about the first bar after `as_of`.
    """
    resolved = 0
    for symbol in symbols:
        pending = session.scalars(
            select(Prediction)
            .where(Prediction.symbol == symbol, Prediction.status == PENDING)
            .order_by(Prediction.as_of)
        ).all()
        if not pending:
            continue
        bars = session.execute(
            select(MarketBar.id, MarketBar.ts, MarketBar.close)
            .where(MarketBar.symbol == symbol, MarketBar.ts >= min(p.as_of for p in pending))
            .order_by(MarketBar.ts)
        ).all()
        resolved += _resolve_against_bars(session, pending, bars, now)
    return resolved


def _resolve_against_bars(
    session: Session, pending: Sequence[Prediction], bars: Sequence[Any], now: datetime
) -> int:
    index_of = {row.ts: i for i, row in enumerate(bars)}
    resolved = 0
    for prediction in pending:
        i = index_of.get(prediction.as_of)
        if i is None or i + 1 >= len(bars):
            continue
        base, nxt = bars[i], bars[i + 1]
        actual = "up" if nxt.close > base.close else "down"
        session.execute(
            update(Prediction)
            .where(Prediction.id == prediction.id, Prediction.status == PENDING)
            .values(
                status=RESOLVED,
                actual_direction=actual,
                correct=actual == prediction.direction,
                resolved_at=now,
                resolution_source="bars",
                resolving_bar_id=nxt.id,
            )
        )
        resolved += 1
    return resolved


@dataclass(frozen=True)
class AccuracyRow:
    symbol: str
    model_version: str
    resolved: int
    correct: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.resolved if self.resolved else 0.0


def rolling_accuracy(session: Session, *, since: datetime, per_group_limit: int) -> list[AccuracyRow]:
    """Share right per (symbol, model version) over the newest resolved predictions.

    Window by time (`since`) and by count (`per_group_limit` newest per group), both bounded.
    """
    newest_first = func.row_number().over(
        partition_by=(Prediction.symbol, Prediction.model_version), order_by=Prediction.resolved_at.desc()
    )
    ranked = (
        select(Prediction.symbol, Prediction.model_version, Prediction.correct, newest_first.label("rank"))
        .where(Prediction.status == RESOLVED, Prediction.resolved_at >= since)
        .subquery()
    )
    rows = session.execute(
        select(
            ranked.c.symbol,
            ranked.c.model_version,
            func.count(),
            func.sum(case((ranked.c.correct.is_(True), 1), else_=0)),
        )
        .where(ranked.c.rank <= per_group_limit)
        .group_by(ranked.c.symbol, ranked.c.model_version)
        .order_by(ranked.c.symbol, ranked.c.model_version)
    ).all()
    return [AccuracyRow(symbol, version, int(n), int(right or 0)) for symbol, version, n, right in rows]


def pending_counts(session: Session) -> dict[str, int]:
    rows = session.execute(
        select(Prediction.symbol, func.count())
        .where(Prediction.status == PENDING)
        .group_by(Prediction.symbol)
    ).all()
    return {symbol: int(n) for symbol, n in rows}
