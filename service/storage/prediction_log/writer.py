"""`LogWriter`: the one thread per process that drains the prediction log's spool into SQL.

Each batch is one transaction: a multi-row `INSERT ... ON CONFLICT (id) DO NOTHING` of the rows
(idempotent: a replayed record never doubles a row), the spooled feedback, and the resolution of
rows whose next bar is already stored. Connection trouble leaves the batch spooled and retries
with backoff; a record the database rejects for what it is goes to quarantine instead of
blocking the log. Every batch has a `prediction_log.write` span linking to the requests whose
rows it wrote, with the SQL spans below it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, Protocol

from opentelemetry import trace
from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session

from service.storage.database import Database
from service.storage.prediction_log.records import Decoded, LoggedFeedback, LoggedPrediction, decode
from service.storage.prediction_log.spool import Batch, frame
from service.storage.prediction_rows import resolve_due_predictions
from service.storage.tables import PENDING, RESOLVED, MarketBar, Prediction
from service.telemetry.providers import Telemetry

log = logging.getLogger(__name__)

PREDICTIONS = Prediction.metadata.tables["predictions"]  # Core, not the ORM: no unit of work needed

FEEDBACK_DEFER_SECONDS = 3600.0
ADOPT_INTERVAL_SECONDS = 5.0
RETRY_MIN_SECONDS = 0.05
RETRY_MAX_SECONDS = 2.0
# The SDK keeps at most 128 links per span (OTEL_SPAN_LINK_COUNT_LIMIT); one per record.
MAX_LINKS = 128
CATCH_UP_AFTER_SECONDS = 1.0

_UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeoutError)


def _is_unavailable(error: BaseException) -> bool:
    """Connection-level trouble (retry later), as opposed to a row the database rejects."""
    if isinstance(error, _UNAVAILABLE):
        return True
    return isinstance(error, DBAPIError) and bool(error.connection_invalidated)


class DrainSource(Protocol):
    """What the writer needs from the log (`log.PredictionLog` implements it)."""

    root: Path

    def read_batch(self) -> Batch: ...
    def skip_finished(self, batch: Batch) -> None: ...
    def committed(self, batch: Batch, decoded: Sequence[Decoded]) -> None: ...
    def write_failed(self, error: str) -> None: ...
    def carry_forward(self, feedback: LoggedFeedback) -> None: ...
    def adopt_orphans(self) -> int: ...


class LogWriter:
    """The one thread per process that moves spooled records into the database."""

    def __init__(self, source: DrainSource, *, database: Database, telemetry: Telemetry) -> None:
        self._log = source
        self._database = database
        self._metrics = telemetry.metrics
        self._wakeup = threading.Condition()
        self._pending_wake = False
        self._deadline: float | None = None
        self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
        self._next_adoption = time.monotonic() + ADOPT_INTERVAL_SECONDS
        self._tracer = telemetry.tracer

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        with self._wakeup:
            self._pending_wake = True
            self._wakeup.notify()

    def stop(self, *, deadline: float) -> None:
        """Drain until the spool is empty or `deadline` passes, then end."""
        with self._wakeup:
            self._deadline = deadline
            self._wakeup.notify()
        self._thread.join(timeout=max(0.0, deadline - time.monotonic()) + 5.0)

    def _stopping(self) -> bool:
        return self._deadline is not None

    def _run(self) -> None:
        retry = RETRY_MIN_SECONDS
        while True:
            if self._deadline is not None and time.monotonic() >= self._deadline:
                return
            try:
                outcome = self._step()
            except Exception as error:  # a dead writer would stop the log silently: never die
                log.exception("prediction log writer: unexpected error; retrying")
                self._log.write_failed(type(error).__name__)
                outcome = "failed"
            if outcome == "done":
                return
            if outcome == "idle":
                self._wait(ADOPT_INTERVAL_SECONDS)
            elif outcome == "written":
                retry = RETRY_MIN_SECONDS
            else:
                if self._stopping() and self._deadline is not None:
                    retry = min(retry, max(0.0, self._deadline - time.monotonic()))
                self._wait(retry)
                retry = min(retry * 2, RETRY_MAX_SECONDS)

    def _step(self) -> Literal["written", "failed", "idle", "done"]:
        """Adopt if due, then write the next batch: what happened, for the loop's pacing."""
        self._adopt_if_due()
        batch = self._log.read_batch()
        if batch.records:
            return "written" if self._write(batch) else "failed"
        if batch.finished:
            self._log.skip_finished(batch)
            return "written"
        return "done" if self._stopping() else "idle"

    def _wait(self, seconds: float) -> None:
        with self._wakeup:
            if not self._pending_wake and self._deadline is None:
                self._wakeup.wait(seconds)
            elif self._deadline is not None and not self._pending_wake:
                self._wakeup.wait(min(seconds, max(0.0, self._deadline - time.monotonic())))
            self._pending_wake = False

    def _adopt_if_due(self) -> None:
        if time.monotonic() < self._next_adoption:
            return
        self._next_adoption = time.monotonic() + ADOPT_INTERVAL_SECONDS
        try:
            self._log.adopt_orphans()
        except OSError:
            log.exception("could not adopt orphaned spools")

    def _write(self, batch: Batch) -> bool:
        """One transaction for the batch; True when it is in the database (or set aside)."""
        decoded = [decode(record.payload) for _segment, record in batch.records]
        metrics = self._metrics
        rows = sum(len(item.rows) for item in decoded)
        started = time.perf_counter()
        links = [trace.Link(item.link) for item in decoded if item.link is not None][:MAX_LINKS]
        with self._tracer.start_as_current_span(
            "prediction_log.write", links=links, kind=trace.SpanKind.INTERNAL
        ) as span:
            if span.is_recording():
                span.set_attribute("prediction_log.records", len(decoded))
                span.set_attribute("prediction_log.rows", rows)
            try:
                deferred = self._transaction(decoded)
            except Exception as error:
                if not _is_unavailable(error):
                    return self._write_one_by_one(batch, decoded)
                metrics.prediction_log_rows_failed.add(rows, {"reason": "unavailable"})
                self._log.write_failed(type(error).__name__)
                span.set_status(trace.StatusCode.ERROR, type(error).__name__)
                log.warning("prediction log: database unavailable, rows stay spooled", extra={"rows": rows})
                return False
        elapsed = time.perf_counter() - started
        metrics.prediction_log_write_duration.record(elapsed)
        metrics.prediction_log_batch_size.record(rows)
        metrics.prediction_log_rows_written.add(rows)
        self._carry_forward(deferred)
        self._log.committed(batch, decoded)
        return True

    def _transaction(self, decoded: Sequence[Decoded]) -> list[LoggedFeedback]:
        """Insert the rows, apply the feedback, resolve rows whose next bar is already stored."""
        rows = [row for item in decoded for row in item.rows]
        deferred: list[LoggedFeedback] = []
        with self._database.session() as session:
            if rows:
                insert_ignoring_duplicates(session, rows)
            for item in decoded:
                if item.feedback is not None and not apply_feedback(session, item.feedback):
                    deferred.append(item.feedback)
            due = symbols_with_newer_bars(session, _lagging(rows)) if rows else []
            if due:
                resolve_due_predictions(session, symbols=due, now=datetime.now(UTC))
        return deferred

    def _write_one_by_one(self, batch: Batch, decoded: Sequence[Decoded]) -> bool:
        """A record the database rejects must not block the others: find it, set it aside."""
        metrics = self._metrics
        for (_segment, record), item in zip(batch.records, decoded, strict=True):
            try:
                self._carry_forward(self._transaction([item]))
            except Exception as error:
                if _is_unavailable(error):
                    self._log.write_failed(type(error).__name__)
                    return False
                _quarantine(self._log.root, record.payload)
                metrics.prediction_log_rows_failed.add(max(1, len(item.rows)), {"reason": "rejected"})
                log.error(
                    "prediction log: the database rejected a record; set aside in quarantine",
                    extra={"error": type(error).__name__, "rows": len(item.rows)},
                )
            else:
                metrics.prediction_log_rows_written.add(len(item.rows))
        self._log.committed(batch, decoded)
        return True

    def _carry_forward(self, deferred: Sequence[LoggedFeedback]) -> None:
        """Feedback whose row is not in the database yet goes back to the spool, for a later batch."""
        for feedback in deferred:
            if time.time() - feedback.first_spooled_at > FEEDBACK_DEFER_SECONDS:
                self._metrics.prediction_log_rows_failed.add(1, {"reason": "orphaned_feedback"})
                log.error("feedback for a prediction that never arrived was dropped")
                continue
            self._log.carry_forward(feedback)


def insert_ignoring_duplicates(session: Session, rows: Sequence[LoggedPrediction]) -> None:
    """INSERT ... ON CONFLICT (id) DO NOTHING of every row, as one executemany, on both backends.

    One statement compiled once (SQLAlchemy caches it) and a list of parameter sets: SQLite runs
    the executemany in C, psycopg 3 pipelines it; either way one round of work per batch, in the
    caller's transaction. (A literal multi-row VALUES statement would be compiled anew for every
    batch: measured as the writer's largest cost, with the garbage it leaves.)
    """
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(PREDICTIONS).on_conflict_do_nothing(index_elements=["id"])
    session.connection().execute(statement, [{**row.columns(), "status": PENDING} for row in rows])


def apply_feedback(session: Session, feedback: LoggedFeedback) -> bool:
    """Resolve the row if still pending; False when the row is not in the database yet."""
    result = session.execute(
        update(Prediction)
        .where(Prediction.id == feedback.prediction_id, Prediction.status == PENDING)
        .values(
            status=RESOLVED,
            actual_direction=feedback.actual_direction,
            correct=Prediction.direction == feedback.actual_direction,
            resolved_at=feedback.resolved_at,
            resolution_source="feedback",
        )
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0):
        return True
    exists = session.scalar(select(Prediction.id).where(Prediction.id == feedback.prediction_id))
    return exists is not None  # resolved already: the first resolution wins


def _lagging(rows: Sequence[LoggedPrediction]) -> list[LoggedPrediction]:
    """Rows that spent long enough in the spool for a bar to have arrived meanwhile.

    Ingestion in this process writes the spool out before it stores bars, so those bars resolve
    the rows themselves; a row written within CATCH_UP_AFTER_SECONDS of being served is checked no
    further (another worker's bar in that instant resolves it at the symbol's next ingestion).
    Rows that waited (an outage, a backlog, an adopted spool) are checked against the newest bars.
    """
    horizon = datetime.now(UTC) - timedelta(seconds=CATCH_UP_AFTER_SECONDS)
    return [row for row in rows if row.created_at < horizon]


def symbols_with_newer_bars(session: Session, rows: Sequence[LoggedPrediction]) -> list[str]:
    """Symbols of which some row is older than the newest stored bar (its outcome is known)."""
    oldest: dict[str, datetime] = {}
    for row in rows:
        oldest[row.symbol] = min(row.as_of, oldest.get(row.symbol, row.as_of))
    if not oldest:
        return []
    query = (
        select(MarketBar.symbol, func.max(MarketBar.ts))
        .where(MarketBar.symbol.in_(list(oldest)))
        .group_by(MarketBar.symbol)
    )
    newest: dict[str, datetime] = {row[0]: row[1] for row in session.execute(query).all()}
    return sorted(s for s, as_of in oldest.items() if s in newest and _utc(newest[s]) > _utc(as_of))


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _quarantine(root: Path, payload: bytes) -> None:
    """Keep a rejected record durably, framed like the spool, for an operator to inspect."""
    target = root / "quarantine"
    target.mkdir(parents=True, exist_ok=True)
    with (target / "rejected.seg").open("ab") as handle:
        handle.write(frame(payload))
        handle.flush()
        os.fsync(handle.fileno())
