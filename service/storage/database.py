"""Engine and transactions, tuned per backend (SQLite is the embedded default, PostgreSQL production)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Engine,
    create_engine,
    event,
)
from sqlalchemy.orm import Session, sessionmaker


@dataclass(frozen=True)
class PoolLimits:
    """Connections held and how long a request waits for one; past that, SQLAlchemy raises its
    TimeoutError, which the API answers with 503 and Retry-After (pool exhaustion is load)."""

    size: int = 10
    max_overflow: int = 10
    timeout_seconds: float = 5.0


def make_engine(database_url: str, pool: PoolLimits | None = None) -> Engine:
    """An engine tuned per backend: WAL, durable commits and a busy timeout for SQLite; pre-ping
    and a bounded connect for PostgreSQL."""
    pool = pool or PoolLimits()
    limits: dict[str, Any] = {
        "pool_size": pool.size,
        "max_overflow": pool.max_overflow,
        "pool_timeout": pool.timeout_seconds,
    }
    if database_url.startswith("sqlite"):
        engine = create_engine(
            database_url, connect_args={"check_same_thread": False, "timeout": 15}, **limits
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # libpq waits for a TCP connect as long as the kernel does (minutes against a black-holed
    # host); a bounded connect lets the writer and health report the outage and retry instead.
    connect_args = {} if "connect_timeout=" in database_url else {"connect_args": {"connect_timeout": 5}}
    return create_engine(database_url, pool_pre_ping=True, **connect_args, **limits)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk when it returns. The prediction log trims its spool once the
    # writer's transaction commits, so a commit lost to a power cut (NORMAL's risk in WAL mode)
    # would lose answered predictions; the writer commits once per batch, so this costs little.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Database:
    """Engine plus session factory; one per process, created in the app's lifespan."""

    def __init__(self, database_url: str, pool: PoolLimits | None = None) -> None:
        self.url = database_url
        self.engine = make_engine(database_url, pool)
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
