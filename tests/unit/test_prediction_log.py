"""The prediction log on both backends: durable rows drained exactly once, replay, adoption,
feedback on spooled rows, catch-up resolution, the full-spool refusal, rejected rows set aside."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from sqlalchemy import func, select

from service.config import Settings
from service.storage.database import Database
from service.storage.market_bars import BarIn, upsert_bars
from service.storage.migrations import upgrade_to_head
from service.storage.prediction_log.log import PredictionLog, PredictionLogFullError
from service.storage.prediction_log.records import LoggedFeedback, LoggedPrediction
from service.storage.prediction_log.spool import SpoolDirectory, read_records
from service.storage.prediction_log.writer import insert_ignoring_duplicates
from service.storage.tables import PENDING, RESOLVED, Prediction
from service.telemetry.providers import Telemetry, noop_telemetry, setup_telemetry
from tests.telemetry import collect

AS_OF = datetime(2024, 3, 4, 21, 0, tzinfo=UTC)
LogFactory = Callable[..., PredictionLog]


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


@pytest.fixture
def make_log(database: Database, tmp_path: Path) -> Iterator[LogFactory]:
    """Builds logs over one spool root (as successive or parallel processes would) and closes them."""
    opened: list[PredictionLog] = []

    def build(*, writer: bool = True, telemetry: Telemetry | None = None, **options: object) -> PredictionLog:
        log = PredictionLog(
            root=tmp_path / "prediction-log",
            database=database,
            telemetry=telemetry or noop_telemetry(),
            max_bytes=int(options.pop("max_bytes", 1 << 20)),  # type: ignore[call-overload]
            **options,  # type: ignore[arg-type]
        )
        log.start(writer=writer)
        opened.append(log)
        return log

    yield build
    for log in opened:
        log.close(flush_seconds=2)


def row(symbol: str = "AAPL", *, as_of: datetime = AS_OF, trace_id: str | None = None) -> LoggedPrediction:
    return LoggedPrediction(
        id=str(uuid.uuid4()),
        created_at=as_of + timedelta(hours=1),
        symbol=symbol,
        as_of=as_of,
        direction="up",
        confidence=0.61,
        probability_up=0.61,
        model_name="stock-direction",
        model_version="1",
        feature_set_version="1",
        trace_id=trace_id,
    )


def stored(database: Database) -> dict[str, Prediction]:
    with database.session() as session:
        return {p.id: p for p in session.scalars(select(Prediction))}


def row_count(database: Database) -> int:
    with database.session() as session:
        return int(session.scalar(select(func.count()).select_from(Prediction)) or 0)


def bar(day: int, close: float, symbol: str = "AAPL") -> BarIn:
    ts = AS_OF + timedelta(days=day)
    return BarIn(symbol, ts, close, close + 1, close - 1, close, 1000.0)


# --- the normal path ---------------------------------------------------------------------------


def test_rows_are_durable_when_append_returns_and_reach_the_database(
    make_log: LogFactory, database: Database
) -> None:
    log = make_log()
    rows = [row(trace_id="ab" * 16), row("MSFT")]
    log.append(rows[:1])
    log.append(rows[1:])
    assert log.flush(timeout=10)
    found = stored(database)
    assert set(found) == {r.id for r in rows}
    first = found[rows[0].id]
    assert (first.status, first.trace_id, first.symbol, first.as_of) == (PENDING, "ab" * 16, "AAPL", AS_OF)
    assert log.status().spool_rows == 0
    assert log.status().state == "up"


def test_a_replayed_row_is_never_doubled(database: Database) -> None:
    rows = [row(), row()]
    with database.session() as session:
        insert_ignoring_duplicates(session, rows)
    with database.session() as session:
        insert_ignoring_duplicates(session, [*rows, row()])  # a retried batch plus a new row
    assert row_count(database) == 3


def test_a_batch_is_one_record_all_or_nothing(make_log: LogFactory, database: Database) -> None:
    log = make_log(writer=False)
    rows = [row("AAPL"), row("MSFT"), row("NVDA")]
    where = log.submit(rows).result(timeout=10)
    (record,) = read_records(log.root / where.segment.owner / f"{where.segment.seq:010d}.seg")
    assert all(r.id.encode() in record.payload for r in rows)


# --- crash, replay and adoption ----------------------------------------------------------------


def test_a_spool_left_behind_is_replayed_exactly_once(make_log: LogFactory, database: Database) -> None:
    crashed = make_log(writer=False)  # rows durable, never written: the process "dies" now
    rows = [row() for _ in range(25)]
    for r in rows:
        crashed.append([r])
    with database.session() as session:  # some had made it before the crash
        insert_ignoring_duplicates(session, rows[:10])
    assert crashed._directory is not None
    crashed._directory.release()  # what the kernel does when the process dies

    survivor = make_log()
    assert survivor.flush(timeout=10)
    assert set(stored(database)) == {r.id for r in rows}
    assert row_count(database) == 25
    assert not crashed._directory.path.exists(), "the adopted spool is removed once drained"


def test_a_live_workers_spool_is_left_alone(make_log: LogFactory, database: Database) -> None:
    other = make_log(writer=False)
    other.append([row()])
    mine = make_log()
    assert mine.adopt_orphans() == 0
    assert mine.flush(timeout=5)
    assert row_count(database) == 0, "another live process owns that row"


def test_a_row_in_another_workers_spool_is_found(make_log: LogFactory) -> None:
    other = make_log(writer=False)
    wanted = row("GOOGL")
    other.append([row(), wanted])
    mine = make_log()
    assert mine.find(wanted.id) is None
    assert mine.find_elsewhere(wanted.id) == wanted
    assert mine.find_elsewhere(str(uuid.uuid4())) is None


# --- feedback and resolution -------------------------------------------------------------------


def test_feedback_on_a_spooled_row_is_applied_when_it_lands(make_log: LogFactory, database: Database) -> None:
    log = make_log(writer=False)
    spooled = row()
    log.append([spooled])
    at = datetime(2024, 3, 6, tzinfo=UTC)
    log.append_feedback(LoggedFeedback(spooled.id, "down", at, 0.0))
    found = log.find(spooled.id)
    assert found is not None
    assert found.row == spooled
    assert found.feedback is not None
    assert found.feedback.actual_direction == "down"

    log.start_writer()
    assert log.flush(timeout=10)
    landed = stored(database)[spooled.id]
    assert (landed.status, landed.actual_direction, landed.correct) == (RESOLVED, "down", False)
    assert (landed.resolution_source, landed.resolved_at) == ("feedback", at)
    assert log.find(spooled.id) is None


def test_rows_whose_next_bar_arrived_meanwhile_are_resolved_as_they_land(
    make_log: LogFactory, database: Database
) -> None:
    with database.session() as session:
        upsert_bars(session, bars=[bar(0, 100.0)])
    log = make_log(writer=False)
    spooled = row(as_of=AS_OF)
    log.append([spooled])
    with database.session() as session:  # the next bar is ingested while the row is spooled
        upsert_bars(session, bars=[bar(1, 101.0)])
    log.start_writer()
    assert log.flush(timeout=10)
    landed = stored(database)[spooled.id]
    assert (landed.status, landed.actual_direction, landed.correct) == (RESOLVED, "up", True)
    assert landed.resolution_source == "bars"


# --- bounds and failures -----------------------------------------------------------------------


def test_a_full_spool_refuses_rows_and_says_so(make_log: LogFactory, database: Database) -> None:
    log = make_log(writer=False, max_bytes=2048)
    accepted, refusal = 0, ""
    while accepted < 100 and not refusal:
        try:
            log.append([row()])
            accepted += 1
        except PredictionLogFullError as refused:
            refusal = str(refused)
    assert refusal.startswith("prediction log is full")
    assert 0 < accepted < 100
    assert log.status().state == "down"
    log.start_writer()
    assert log.flush(timeout=10)
    assert row_count(database) == accepted, "every accepted row lands, the refused one never existed"
    log.append([row()])  # room again
    assert log.status().state == "up"


def test_an_unreachable_database_keeps_rows_spooled_and_degrades(tmp_path: Path) -> None:
    unreachable = Database("postgresql+psycopg://nobody:secret@127.0.0.1:1/none?connect_timeout=1")
    reader = InMemoryMetricReader()
    telemetry = setup_telemetry(
        Settings(_env_file=None, DATA_DIR=tmp_path),  # type: ignore[call-arg]
        extra_metric_readers=[reader],
        prometheus_endpoint=False,
    )
    log = PredictionLog(
        root=tmp_path / "prediction-log", database=unreachable, telemetry=telemetry, max_bytes=1 << 20
    )
    log.start()
    try:
        log.append([row()])
        assert not log.flush(timeout=1.5)
        status = log.status()
        assert (status.state, status.database_reachable, status.spool_rows) == ("degraded", False, 1)
        assert status.last_error == "OperationalError"
        collected = collect(reader)
        failed = collected["prediction_log.rows.failed"].points
        assert sum(p.value for p in failed if p.attributes == {"reason": "unavailable"}) >= 1
        assert [p.value for p in collected["prediction_log.spool.rows"].points] == [1]
        assert [p.value for p in collected["prediction_log.spool.capacity"].points] == [1 << 20]
    finally:
        log.close(flush_seconds=0.5)
        telemetry.shutdown()
        unreachable.dispose()
    (left,) = SpoolDirectory.siblings(tmp_path / "prediction-log")
    assert left.is_dir(), "the undrained spool stays for the next process"


@pytest.mark.integration
def test_a_row_the_database_rejects_is_quarantined_not_blocking(
    fresh_postgres_url: str, tmp_path: Path
) -> None:
    """PostgreSQL rejects an over-long symbol (varchar(16)); SQLite would store it."""
    database = Database(fresh_postgres_url)
    upgrade_to_head(database.engine)
    log = PredictionLog(
        root=tmp_path / "prediction-log", database=database, telemetry=noop_telemetry(), max_bytes=1 << 20
    )
    log.start(writer=False)
    try:
        good, bad = row(), row("X" * 40)
        log.append([bad])
        log.append([good])
        log.start_writer()
        assert log.flush(timeout=10)
        assert set(stored(database)) == {good.id}
        quarantined = list(read_records(log.root / "quarantine" / "rejected.seg"))
        assert len(quarantined) == 1
        assert bad.id.encode() in quarantined[0].payload
    finally:
        log.close(flush_seconds=1)
        database.dispose()
