"""Storage queries on both backends: SQLite (embedded default) and PostgreSQL (production).

Each test gets an empty database brought to the head revision by the real Alembic migrations.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import event, inspect, select
from sqlalchemy.exc import OperationalError

from service.storage.database import Database
from service.storage.market_bars import BarIn, UpsertResult, count_bars, last_bar, recent_bars, upsert_bars
from service.storage.migrations import upgrade_to_head
from service.storage.prediction_rows import (
    get_prediction,
    new_prediction_id,
    pending_counts,
    resolve_due_predictions,
    rolling_accuracy,
)
from service.storage.tables import PENDING, RESOLVED, MarketBar, Prediction

DAY0 = datetime(2024, 3, 4, 21, 0, tzinfo=UTC)  # a Monday close
NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.integration),
    ]
)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("fresh_postgres_url")
    db = Database(url)
    upgrade_to_head(db.engine)
    yield db
    db.dispose()


def make_bar(day: int, close: float, *, symbol: str = "AAPL") -> BarIn:
    return BarIn(
        symbol=symbol,
        ts=DAY0 + timedelta(days=day),
        open=close,
        high=close + 1,
        low=close - 1,
        close=close,
        volume=1000.0 + day,
    )


def store(database: Database, *bars: BarIn) -> None:
    with database.session() as session:
        upsert_bars(session, bars=bars)


def add(
    database: Database,
    *,
    as_of: datetime,
    direction: str = "up",
    symbol: str = "AAPL",
    model_version: str = "1",
    status: str = PENDING,
    correct: bool | None = None,
    resolved_at: datetime | None = None,
) -> str:
    prediction_id = new_prediction_id()
    with database.session() as session:
        session.add(
            Prediction(
                id=prediction_id,
                created_at=as_of + timedelta(minutes=5),
                symbol=symbol,
                as_of=as_of,
                direction=direction,
                confidence=0.6,
                probability_up=0.6 if direction == "up" else 0.4,
                model_name="stock-direction",
                model_version=model_version,
                feature_set_version="1",
                trace_id=None,
                status=status,
                correct=correct,
                resolved_at=resolved_at,
            ),
        )
    return prediction_id


def fetch(database: Database, prediction_id: str) -> Prediction:
    with database.session() as session:
        row = get_prediction(session, prediction_id=prediction_id)
    assert row is not None
    return row


def resolve(database: Database, now: datetime = NOW, symbols: tuple[str, ...] = ("AAPL",)) -> int:
    with database.session() as session:
        return resolve_due_predictions(session, symbols=symbols, now=now)


# --- schema --------------------------------------------------------------------------------------


def test_migrations_create_the_tables_and_rerun_as_a_no_op(database: Database) -> None:
    tables = set(inspect(database.engine).get_table_names())
    assert {"market_bars", "predictions", "alembic_version"} <= tables
    store(database, make_bar(0, 100.0))
    upgrade_to_head(database.engine)
    with database.session() as session:
        assert count_bars(session) == 1


# --- bars ----------------------------------------------------------------------------------------


def test_upserting_the_same_bars_twice_updates_instead_of_duplicating(database: Database) -> None:
    first = [make_bar(day, 100.0 + day) for day in range(3)]
    with database.session() as session:
        assert upsert_bars(session, bars=first) == UpsertResult(inserted=3, updated=0)
    revised = [make_bar(day, 200.0 + day) for day in range(3)]
    with database.session() as session:
        result = upsert_bars(session, bars=revised)
    assert (result.inserted, result.updated) == (0, 3)
    with database.session() as session:
        assert count_bars(session) == 3
        closes = [b.close for b in recent_bars(session, symbol="AAPL", limit=10)]
    assert closes == [200.0, 201.0, 202.0]


def test_upsert_counts_new_and_existing_bars_separately(database: Database) -> None:
    store(database, make_bar(0, 100.0), make_bar(1, 101.0))
    with database.session() as session:
        result = upsert_bars(
            session, bars=[make_bar(1, 111.0), make_bar(2, 102.0), make_bar(1, 5.0, symbol="MSFT")]
        )
    assert (result.inserted, result.updated) == (2, 1)
    with database.session() as session:
        assert count_bars(session) == 4


def test_recent_bars_are_the_newest_oldest_first(database: Database) -> None:
    store(database, *[make_bar(day, 100.0 + day) for day in range(6)], make_bar(9, 1.0, symbol="MSFT"))
    with database.session() as session:
        newest = recent_bars(session, symbol="AAPL", limit=3)
        latest = last_bar(session, symbol="AAPL")
    assert [b.close for b in newest] == [103.0, 104.0, 105.0]
    assert latest is not None
    assert latest.close == 105.0


def test_timestamps_round_trip_as_utc(database: Database) -> None:
    plus_two = timezone(timedelta(hours=2))
    local = datetime(2024, 3, 5, 23, 0, tzinfo=plus_two)  # 21:00 UTC
    naive = datetime(2024, 3, 6, 21, 0)  # taken as UTC
    with database.session() as session:
        upsert_bars(
            session, bars=[BarIn("AAPL", local, 1, 2, 0.5, 1, 1), BarIn("AAPL", naive, 1, 2, 0.5, 1, 1)]
        )
    with database.session() as session:
        stamps = [b.ts for b in recent_bars(session, symbol="AAPL", limit=5)]
    assert stamps == [datetime(2024, 3, 5, 21, tzinfo=UTC), datetime(2024, 3, 6, 21, tzinfo=UTC)]
    assert all(ts.utcoffset() == timedelta(0) for ts in stamps)
    # The same instant written with another offset is the same key: an update, not a new row.
    with database.session() as session:
        again = upsert_bars(
            session, bars=[BarIn("AAPL", datetime(2024, 3, 5, 21, tzinfo=UTC), 1, 2, 0.5, 1, 1)]
        )
    assert (again.inserted, again.updated) == (0, 1)


# --- resolving predictions -----------------------------------------------------------------------


def test_prediction_stays_pending_until_the_next_bar_exists(database: Database) -> None:
    store(database, make_bar(0, 100.0))
    prediction_id = add(database, as_of=DAY0)
    assert resolve(database) == 0
    assert fetch(database, prediction_id).status == PENDING


def test_next_bar_resolves_a_prediction_that_was_right(database: Database) -> None:
    store(database, make_bar(0, 100.0))
    prediction_id = add(database, as_of=DAY0, direction="up")
    store(database, make_bar(1, 105.0))  # 105 > 100: the market went up
    assert resolve(database) == 1
    row = fetch(database, prediction_id)
    with database.session() as session:
        next_bar_id = session.scalar(select(MarketBar.id).where(MarketBar.ts == DAY0 + timedelta(days=1)))
    assert (row.status, row.actual_direction, row.correct) == (RESOLVED, "up", True)
    assert (row.resolution_source, row.resolving_bar_id, row.resolved_at) == ("bars", next_bar_id, NOW)


def test_next_bar_resolves_a_prediction_that_was_wrong(database: Database) -> None:
    store(database, make_bar(0, 100.0), make_bar(1, 105.0), make_bar(2, 103.0))
    prediction_id = add(database, as_of=DAY0 + timedelta(days=1), direction="up")  # then 105 -> 103
    assert resolve(database) == 1
    row = fetch(database, prediction_id)
    assert (row.actual_direction, row.correct) == ("down", False)


def test_an_unchanged_close_counts_as_down(database: Database) -> None:
    store(database, make_bar(0, 100.0), make_bar(1, 100.0))
    prediction_id = add(database, as_of=DAY0, direction="down")
    resolve(database)
    row = fetch(database, prediction_id)
    assert (row.actual_direction, row.correct) == ("down", True)


def test_prediction_is_resolved_only_once(database: Database) -> None:
    store(database, make_bar(0, 100.0), make_bar(1, 105.0))
    prediction_id = add(database, as_of=DAY0)
    assert resolve(database, now=NOW) == 1
    store(database, make_bar(1, 90.0))  # a corrected bar arrives later
    assert resolve(database, now=NOW + timedelta(days=1)) == 0
    row = fetch(database, prediction_id)
    assert (row.actual_direction, row.correct, row.resolved_at) == ("up", True, NOW)


def test_resolution_only_touches_the_requested_symbols(database: Database) -> None:
    store(database, make_bar(0, 100.0, symbol="MSFT"), make_bar(1, 99.0, symbol="MSFT"))
    prediction_id = add(database, as_of=DAY0, symbol="MSFT", direction="down")
    assert resolve(database, symbols=("AAPL",)) == 0
    assert resolve(database, symbols=("MSFT",)) == 1
    assert fetch(database, prediction_id).correct is True


def test_predictions_made_on_the_same_bar_are_resolved_by_one_update(database: Database) -> None:
    """Hundreds of predictions share a bar under load; each gets its own outcome, in one statement."""
    store(database, make_bar(0, 100.0), make_bar(1, 101.0), make_bar(2, 99.0))
    ups = [add(database, as_of=DAY0, direction="up") for _ in range(60)]
    downs = [add(database, as_of=DAY0, direction="down") for _ in range(40)]
    later = [add(database, as_of=DAY0 + timedelta(days=1), direction="up") for _ in range(30)]
    updates: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        if statement.lstrip().upper().startswith("UPDATE"):
            updates.append(statement)

    event.listen(database.engine, "before_cursor_execute", count)
    try:
        assert resolve(database) == 130
    finally:
        event.remove(database.engine, "before_cursor_execute", count)
    assert len(updates) == 2, "one UPDATE per (symbol, bar), not one per prediction"
    assert {fetch(database, i).correct for i in ups} == {True}  # 100 -> 101: up
    assert {fetch(database, i).correct for i in downs} == {False}
    assert {(fetch(database, i).actual_direction, fetch(database, i).correct) for i in later} == {
        ("down", False)
    }


# --- accuracy and pending counts -----------------------------------------------------------------


def test_rolling_accuracy_keeps_the_newest_n_per_group(database: Database) -> None:
    # Oldest to newest: right, right, wrong, wrong, right. The newest 3 hold 1 right of 3.
    for k, correct in enumerate([True, True, False, False, True]):
        add(database, as_of=DAY0, status=RESOLVED, correct=correct, resolved_at=NOW + timedelta(hours=k))
    add(database, as_of=DAY0, status=RESOLVED, correct=True, resolved_at=NOW, model_version="2")
    with database.session() as session:
        rows = rolling_accuracy(session, since=NOW - timedelta(days=1), per_group_limit=3)
    by_group = {(r.symbol, r.model_version): (r.resolved, r.correct) for r in rows}
    assert by_group == {("AAPL", "1"): (3, 1), ("AAPL", "2"): (1, 1)}
    assert next(r for r in rows if r.model_version == "1").accuracy == pytest.approx(1 / 3)


def test_rolling_accuracy_ignores_predictions_resolved_before_the_window(database: Database) -> None:
    add(database, as_of=DAY0, status=RESOLVED, correct=False, resolved_at=NOW - timedelta(days=10))
    add(database, as_of=DAY0, status=RESOLVED, correct=True, resolved_at=NOW - timedelta(hours=1))
    add(database, as_of=DAY0, status=RESOLVED, correct=False, resolved_at=NOW)
    add(database, as_of=DAY0)  # pending: never counted
    with database.session() as session:
        rows = rolling_accuracy(session, since=NOW - timedelta(days=1), per_group_limit=100)
    assert [(r.symbol, r.resolved, r.correct) for r in rows] == [("AAPL", 2, 1)]
    assert rows[0].accuracy == pytest.approx(0.5)


def test_pending_counts_per_symbol(database: Database) -> None:
    add(database, as_of=DAY0, symbol="AAPL")
    add(database, as_of=DAY0, symbol="AAPL")
    add(database, as_of=DAY0, symbol="MSFT")
    add(database, as_of=DAY0, symbol="NVDA", status=RESOLVED, correct=True, resolved_at=NOW)
    with database.session() as session:
        assert pending_counts(session) == {"AAPL": 2, "MSFT": 1}


# --- engine settings that durability and outages depend on ----------------------------------


def test_sqlite_commits_are_synchronous_full(tmp_path: Path) -> None:
    """The prediction log trims its spool after the writer's commit: that commit must be on disk."""
    db = Database(f"sqlite:///{tmp_path / 'durable.db'}")
    with db.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    db.dispose()


def test_a_postgresql_that_never_answers_fails_the_connect_instead_of_hanging() -> None:
    """A listener that accepts TCP and never speaks (a hung server): the bounded connect ends it."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    db = Database(f"postgresql+psycopg://nobody:secret@127.0.0.1:{port}/nothing")
    outcome: list[BaseException] = []

    def connect() -> None:
        try:
            db.engine.connect().close()
        except BaseException as error:
            outcome.append(error)

    attempt = threading.Thread(target=connect, daemon=True)
    attempt.start()
    attempt.join(timeout=60)
    silent.close()
    db.dispose()
    assert not attempt.is_alive(), "the connect still hangs after 60 s"
    assert len(outcome) == 1
    assert isinstance(outcome[0], OperationalError), outcome
