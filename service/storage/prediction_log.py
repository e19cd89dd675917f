"""The prediction log: every answered prediction is durable first, in the database soon after.

A request hands its rows to `PredictionLog.append` and waits only for the local spool's group
fsync (`service/storage/spool.py`): a fraction of a millisecond under load, shared by every
request that arrived meanwhile. A writer thread then drains the spool into the `predictions`
table, oldest first, many rows per transaction (group commit), with `INSERT ... ON CONFLICT (id)
DO NOTHING`: replaying a record that was already written (after a crash, or by a process that
adopted a dead one's spool) never doubles a row. So a 200 means the row is stored, and every row
reaches the database exactly once, whatever dies when.

While the database is unreachable, predictions go on being answered and the spool grows, up to
`max_bytes`; beyond that `append` raises `PredictionLogFullError` (the API answers 503) instead
of dropping anything. The writer retries with backoff and drains by itself when the database
returns; rows whose outcome bars arrived meanwhile are resolved as they land.

Feedback on a prediction that is still spooled is spooled too and applied right after its row
lands (`UPDATE ... WHERE status = 'pending'`: the first resolution wins). If the row is not in the
database yet (another worker's spool holds it), the feedback is carried forward, up to
FEEDBACK_DEFER_SECONDS.

Record payloads are JSON objects (`kind` "predictions" with `rows`, or "feedback"), each with the
request's span context so the writer's span links back to the requests whose rows it wrote.
A row the database rejects for what it is (not for being unreachable) is set aside in
`<root>/quarantine/` instead of blocking the log, and counted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from opentelemetry import trace
from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session

from service.storage.database import Database
from service.storage.prediction_rows import resolve_due_predictions
from service.storage.spool import (
    Appended,
    Batch,
    SpoolAppender,
    SpoolDirectory,
    SpoolReader,
    frame,
    read_records,
)
from service.storage.tables import PENDING, RESOLVED, MarketBar, Prediction
from service.telemetry.providers import Telemetry

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
FEEDBACK_DEFER_SECONDS = 3600.0
ADOPT_INTERVAL_SECONDS = 5.0
RETRY_MIN_SECONDS = 0.05
RETRY_MAX_SECONDS = 2.0
# The SDK keeps at most 128 links per span (OTEL_SPAN_LINK_COUNT_LIMIT); one per record.
MAX_LINKS = 128

LogState = Literal["up", "degraded", "down"]


class PredictionLogFullError(RuntimeError):
    """The spool holds `max_bytes` of rows the database has not taken yet; nothing was recorded."""


class PredictionLogClosedError(RuntimeError):
    """The service is shutting down and takes no more rows."""


@dataclass(frozen=True)
class LoggedPrediction:
    """A prediction as logged when it is served (the `predictions` columns known then)."""

    id: str
    created_at: datetime
    symbol: str
    as_of: datetime
    direction: str
    confidence: float
    probability_up: float
    model_name: str
    model_version: str
    feature_set_version: str
    trace_id: str | None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat()
        data["as_of"] = self.as_of.isoformat()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoggedPrediction:
        return cls(
            **{
                **data,
                "created_at": datetime.fromisoformat(data["created_at"]),
                "as_of": datetime.fromisoformat(data["as_of"]),
            }
        )


@dataclass(frozen=True)
class LoggedFeedback:
    """An outcome recorded explicitly for a prediction that was still in a spool."""

    prediction_id: str
    actual_direction: str
    resolved_at: datetime
    first_spooled_at: float  # epoch seconds, kept when the record is carried forward


@dataclass(frozen=True)
class SpooledPrediction:
    """A prediction found in a spool, with the feedback spooled for it (if any)."""

    row: LoggedPrediction
    feedback: LoggedFeedback | None


@dataclass(frozen=True)
class LogStatus:
    """What health, the gauges and `/health` report about the log."""

    state: LogState
    queued_rows: int
    spool_rows: int
    spool_bytes: int
    capacity_bytes: int
    oldest_age_seconds: float
    database_reachable: bool
    last_error: str | None

    def gauges(self) -> dict[str, float]:
        return {
            "queued_rows": self.queued_rows,
            "spool_rows": self.spool_rows,
            "spool_bytes": self.spool_bytes,
            "capacity_bytes": self.capacity_bytes,
            "oldest_age_seconds": self.oldest_age_seconds,
        }


# --- record payloads ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Decoded:
    kind: str
    at: float
    rows: tuple[LoggedPrediction, ...] = ()
    feedback: LoggedFeedback | None = None
    link: trace.SpanContext | None = None


def _span_reference() -> list[str] | None:
    context = trace.get_current_span().get_span_context()
    if not context.is_valid or not context.trace_flags.sampled:
        return None
    return [format(context.trace_id, "032x"), format(context.span_id, "016x")]


def _encode_predictions(rows: Sequence[LoggedPrediction]) -> bytes:
    record = {
        "v": FORMAT_VERSION,
        "kind": "predictions",
        "at": time.time(),
        "rows": [row.to_json() for row in rows],
        "link": _span_reference(),
    }
    return json.dumps(record, separators=(",", ":")).encode()


def _encode_feedback(feedback: LoggedFeedback) -> bytes:
    record = {
        "v": FORMAT_VERSION,
        "kind": "feedback",
        "at": time.time(),
        "id": feedback.prediction_id,
        "actual": feedback.actual_direction,
        "resolved_at": feedback.resolved_at.isoformat(),
        "first_at": feedback.first_spooled_at,
        "link": _span_reference(),
    }
    return json.dumps(record, separators=(",", ":")).encode()


def _decode(payload: bytes) -> _Decoded:
    data = json.loads(payload)
    link = None
    if data.get("link"):
        trace_id, span_id = data["link"]
        link = trace.SpanContext(
            int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=trace.TraceFlags(1)
        )
    if data["kind"] == "predictions":
        rows = tuple(LoggedPrediction.from_json(row) for row in data["rows"])
        return _Decoded("predictions", data["at"], rows=rows, link=link)
    feedback = LoggedFeedback(
        prediction_id=data["id"],
        actual_direction=data["actual"],
        resolved_at=datetime.fromisoformat(data["resolved_at"]),
        first_spooled_at=float(data["first_at"]),
    )
    return _Decoded("feedback", data["at"], feedback=feedback, link=link)


# --- accounting ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tag:
    """What the log knows about one appended record (the appender carries it opaquely)."""

    ids: tuple[str, ...]
    rows: int
    size: int
    feedback: LoggedFeedback | None = None


@dataclass
class _Ledger:
    """Rows and bytes not yet in the database, and where each spooled prediction is."""

    rows: int = 0
    bytes: int = 0
    reserved: int = 0  # bytes handed to the appender, not yet durable
    stored: int = 0  # records ever made durable here (own and adopted), for `flush`
    committed: int = 0  # records ever written to the database
    where: dict[str, tuple[Path, int]] = field(default_factory=dict)  # id -> segment file, offset
    feedback: dict[str, LoggedFeedback] = field(default_factory=dict)


class PredictionLog:
    """Durable-before-answer logging of predictions, drained into SQL by one writer thread."""

    def __init__(
        self,
        *,
        root: Path,
        database: Database,
        telemetry: Telemetry,
        max_bytes: int,
        batch_rows: int = 128,
        degraded_after_seconds: float = 10.0,
        segment_bytes: int | None = None,
    ) -> None:
        self.root = root
        self._database = database
        self._telemetry = telemetry
        self._metrics = telemetry.metrics
        self._max_bytes = max_bytes
        self._batch_rows = batch_rows
        self._degraded_after = degraded_after_seconds
        self._segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._ledger = _Ledger()
        self._closing = False
        self._directory: SpoolDirectory | None = None
        self._appender: SpoolAppender | None = None
        self._reader = SpoolReader()
        self._writer: _Writer | None = None
        self._oldest_at: float | None = None  # `at` of the oldest record not yet written
        self._database_reachable = True
        self._last_error: str | None = None
        self._metrics.observe_prediction_log(lambda: self.status().gauges())

    # --- life cycle ------------------------------------------------------------------------------

    def start(self, *, writer: bool = True) -> None:
        """Open this process's spool, adopt what dead processes left, start draining."""
        self._directory = SpoolDirectory.create(self.root)
        kwargs = {} if self._segment_bytes is None else {"segment_bytes": self._segment_bytes}
        self._appender = SpoolAppender(self._directory, on_durable=self._stored, **kwargs)
        self._reader.add_own(self._directory, self._appender)
        self.adopt_orphans()
        if writer:
            self.start_writer()

    def start_writer(self) -> None:
        self._writer = _Writer(self)
        self._writer.start()

    def close(self, *, flush_seconds: float = 5.0) -> None:
        """Refuse new rows, sync what is queued, give the database one last chance, let go.

        A spool the database did not take stays on disk for the next process to adopt.
        """
        with self._lock:
            self._closing = True
        if self._writer is not None:
            self._writer.stop(deadline=time.monotonic() + flush_seconds)
        if self._appender is not None:
            self._appender.close()
        if self._directory is not None:
            if self.status().spool_rows == 0 and not self._reader.adopted_names():
                self._directory.remove()
            else:
                log.warning(
                    "prediction log closed with rows not in the database; the next process adopts them",
                    extra={"rows": self.status().spool_rows, "spool": str(self._directory.path)},
                )
                self._directory.release()

    # --- the request side ------------------------------------------------------------------------

    def append(self, rows: Sequence[LoggedPrediction], *, timeout: float = 30.0) -> None:
        """Store the rows durably (one record: all or nothing); returns once they are on disk."""
        self.submit(rows).result(timeout=timeout)

    def submit(self, rows: Sequence[LoggedPrediction]) -> Future[Appended]:
        """`append` without waiting: the future completes when the rows are durable."""
        payload = _encode_predictions(rows)
        tag = _Tag(ids=tuple(row.id for row in rows), rows=len(rows), size=len(frame(payload)))
        return self._submit(payload, tag)

    def append_feedback(self, feedback: LoggedFeedback, *, timeout: float = 30.0) -> None:
        payload = _encode_feedback(feedback)
        tag = _Tag(ids=(), rows=0, size=len(frame(payload)), feedback=feedback)
        self._submit(payload, tag).result(timeout=timeout)

    def _submit(self, payload: bytes, tag: _Tag) -> Future[Appended]:
        appender = self._appender
        with self._lock:
            if self._closing or appender is None:
                raise PredictionLogClosedError("the service is shutting down; nothing was recorded")
            ledger = self._ledger
            if ledger.bytes + ledger.reserved + tag.size > self._max_bytes:
                raise PredictionLogFullError(
                    f"prediction log is full: {ledger.rows} rows ({ledger.bytes} bytes, the bound) wait "
                    "for the database; nothing was recorded, retry later"
                )
            ledger.reserved += tag.size
        future = appender.append(payload, tag)
        future.add_done_callback(lambda done: self._release_if_failed(done, tag))
        return future

    def _release_if_failed(self, done: Future[Appended], tag: _Tag) -> None:
        if done.exception() is not None:
            with self._lock:
                self._ledger.reserved -= tag.size

    def _stored(self, appended: Sequence[tuple[object, Appended]]) -> None:
        """Flusher thread, after an fsync and before any waiter is told: account and index."""
        with self._lock:
            ledger = self._ledger
            for tag, where in appended:
                assert isinstance(tag, _Tag)
                ledger.reserved -= tag.size
                self._account(tag, self._segment_file(where), where.offset)
            if self._oldest_at is None:
                self._oldest_at = time.time()
        self._metrics.prediction_log_syncs.add(1)
        self._metrics.prediction_log_records.add(len(appended))
        if self._writer is not None:
            self._writer.wake()

    def _account(self, tag: _Tag, path: Path, offset: int) -> None:
        ledger = self._ledger
        ledger.stored += 1
        ledger.rows += tag.rows
        ledger.bytes += tag.size
        for prediction_id in tag.ids:
            ledger.where[prediction_id] = (path, offset)
        if tag.feedback is not None:
            ledger.feedback[tag.feedback.prediction_id] = tag.feedback

    def _segment_file(self, where: Appended) -> Path:
        return self.root / where.segment.owner / f"{where.segment.seq:010d}.seg"

    def flush(self, *, timeout: float) -> bool:
        """Wait until every record durable now is in the database; False if `timeout` passed first."""
        deadline = time.monotonic() + timeout
        with self._drained:
            target = self._ledger.stored
            while self._ledger.committed < target:
                left = deadline - time.monotonic()
                if left <= 0 or self._writer is None:
                    return False
                self._drained.wait(left)
        return True

    # --- read-your-writes ------------------------------------------------------------------------

    def find(self, prediction_id: str) -> SpooledPrediction | None:
        """The prediction if this process's spool (own or adopted) still holds it."""
        with self._lock:
            where = self._ledger.where.get(prediction_id)
            feedback = self._ledger.feedback.get(prediction_id)
        if where is None:
            return None
        row = _row_at(where[0], where[1], prediction_id)
        return None if row is None else SpooledPrediction(row, feedback)

    def find_elsewhere(self, prediction_id: str) -> LoggedPrediction | None:
        """Look through the spools of the other live workers (a slower scan, for misses only)."""
        needle = prediction_id.encode()
        own = self._directory.name if self._directory is not None else None
        adopted = self._reader.adopted_names()
        for directory in SpoolDirectory.siblings(self.root, excluding=own):
            if directory.name in adopted:
                continue
            for path in sorted(directory.glob("*.seg")):
                with contextlib.suppress(FileNotFoundError):
                    for record in read_records(path):
                        if needle in record.payload:
                            found = _pick(_decode(record.payload), prediction_id)
                            if found is not None:
                                return found
        return None

    # --- state -----------------------------------------------------------------------------------

    def status(self) -> LogStatus:
        with self._lock:
            ledger = self._ledger
            oldest = self._oldest_at
            rows, size = ledger.rows, ledger.bytes
            reachable, error = self._database_reachable, self._last_error
        queued = self._appender.queued if self._appender is not None else 0
        age = max(0.0, time.time() - oldest) if oldest is not None and rows else 0.0
        state: LogState = "up"
        if size + 2 * 1024 > self._max_bytes:
            state = "down"
        elif not reachable or age > self._degraded_after:
            state = "degraded"
        return LogStatus(state, queued, rows, size, self._max_bytes, age, reachable, error)

    # --- adoption --------------------------------------------------------------------------------

    def adopt_orphans(self) -> int:
        """Take over the spools of processes that died; returns how many were adopted."""
        if self._directory is None:
            return 0
        adopted = 0
        taken = self._reader.adopted_names()
        for path in SpoolDirectory.siblings(self.root, excluding=self._directory.name):
            if path.name in taken:
                continue
            directory = SpoolDirectory.try_adopt(path)
            if directory is None:
                continue
            rows = self._index_adopted(directory)
            self._reader.add_adopted(directory)
            adopted += 1
            log.info("adopted the spool of a process that is gone", extra={"spool": path.name, "rows": rows})
        if adopted and self._writer is not None:
            self._writer.wake()
        return adopted

    def _index_adopted(self, directory: SpoolDirectory) -> int:
        rows = 0
        oldest: float | None = None
        for seq in directory.seqs():
            path = directory.segment_path(seq)
            for record in read_records(path):
                decoded = _decode(record.payload)
                oldest = decoded.at if oldest is None else min(oldest, decoded.at)
                tag = _Tag(
                    ids=tuple(row.id for row in decoded.rows),
                    rows=len(decoded.rows),
                    size=record.end - record.offset,
                    feedback=decoded.feedback,
                )
                with self._lock:
                    self._account(tag, path, record.offset)
                rows += tag.rows
        if oldest is not None:
            with self._lock:
                self._oldest_at = oldest if self._oldest_at is None else min(self._oldest_at, oldest)
        return rows

    # --- the writer's side -----------------------------------------------------------------------

    def _read_batch(self) -> Batch:
        return self._reader.read(self._batch_rows)

    def _committed(self, batch: Batch, decoded: Sequence[_Decoded]) -> None:
        """The batch is in the database: trim the spool, forget the rows, move the oldest age on."""
        self._reader.commit(batch)
        following = self._reader.peek()
        next_oldest = None if following is None else _decode(following.payload).at
        with self._lock:
            ledger = self._ledger
            for (_segment, record), item in zip(batch.records, decoded, strict=True):
                ledger.rows -= len(item.rows)
                ledger.bytes -= record.end - record.offset
                for row in item.rows:
                    ledger.where.pop(row.id, None)
                if item.feedback is not None:
                    current = ledger.feedback.get(item.feedback.prediction_id)
                    if current == item.feedback:
                        ledger.feedback.pop(item.feedback.prediction_id, None)
            ledger.committed += len(decoded)
            if next_oldest is None and ledger.rows:
                next_oldest = time.time()  # stored while we looked: at most this old
            self._oldest_at = next_oldest if ledger.rows else None
            self._database_reachable = True
            self._last_error = None
            self._drained.notify_all()

    def _write_failed(self, error: str) -> None:
        with self._lock:
            self._database_reachable = False
            self._last_error = error


def _row_at(path: Path, offset: int, prediction_id: str) -> LoggedPrediction | None:
    try:
        for record in read_records(path, start=offset):
            return _pick(_decode(record.payload), prediction_id)
    except FileNotFoundError:  # written to the database and trimmed meanwhile
        return None
    return None


def _pick(decoded: _Decoded, prediction_id: str) -> LoggedPrediction | None:
    return next((row for row in decoded.rows if row.id == prediction_id), None)


# --- writing to the database ---------------------------------------------------------------------

_UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeoutError)


def _is_unavailable(error: BaseException) -> bool:
    """Connection-level trouble (retry later), as opposed to a row the database rejects."""
    if isinstance(error, _UNAVAILABLE):
        return True
    return isinstance(error, DBAPIError) and bool(error.connection_invalidated)


class _Writer:
    """The one thread per process that moves spooled records into the database."""

    def __init__(self, log_: PredictionLog) -> None:
        self._log = log_
        self._wakeup = threading.Condition()
        self._pending_wake = False
        self._deadline: float | None = None
        self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
        self._next_adoption = time.monotonic() + ADOPT_INTERVAL_SECONDS
        self._tracer = log_._telemetry.tracer

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
            self._adopt_if_due()
            batch = self._log._read_batch()
            if not batch.records:
                if batch.finished:
                    self._log._reader.commit(batch)
                    continue
                if self._stopping():
                    return
                self._wait(ADOPT_INTERVAL_SECONDS)
                continue
            if self._write(batch):
                retry = RETRY_MIN_SECONDS
            else:
                if self._stopping() and self._deadline is not None:
                    retry = min(retry, max(0.0, self._deadline - time.monotonic()))
                self._wait(retry)
                retry = min(retry * 2, RETRY_MAX_SECONDS)

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
        decoded = [_decode(record.payload) for _segment, record in batch.records]
        metrics = self._log._metrics
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
                self._log._write_failed(type(error).__name__)
                span.set_status(trace.StatusCode.ERROR, type(error).__name__)
                log.warning("prediction log: database unavailable, rows stay spooled", extra={"rows": rows})
                return False
        elapsed = time.perf_counter() - started
        metrics.prediction_log_write_duration.record(elapsed)
        metrics.prediction_log_batch_size.record(rows)
        metrics.prediction_log_rows_written.add(rows)
        self._carry_forward(deferred)
        self._log._committed(batch, decoded)
        return True

    def _transaction(self, decoded: Sequence[_Decoded]) -> list[LoggedFeedback]:
        """Insert the rows, apply the feedback, resolve rows whose next bar is already stored."""
        rows = [row for item in decoded for row in item.rows]
        deferred: list[LoggedFeedback] = []
        with self._log._database.session() as session:
            if rows:
                insert_ignoring_duplicates(session, rows)
            for item in decoded:
                if item.feedback is not None and not apply_feedback(session, item.feedback):
                    deferred.append(item.feedback)
            due = symbols_with_newer_bars(session, rows)
            if due:
                resolve_due_predictions(session, symbols=due, now=datetime.now(UTC))
        return deferred

    def _write_one_by_one(self, batch: Batch, decoded: Sequence[_Decoded]) -> bool:
        """A record the database rejects must not block the others: find it, set it aside."""
        metrics = self._log._metrics
        for (_segment, record), item in zip(batch.records, decoded, strict=True):
            try:
                self._carry_forward(self._transaction([item]))
            except Exception as error:
                if _is_unavailable(error):
                    self._log._write_failed(type(error).__name__)
                    return False
                _quarantine(self._log.root, record.payload)
                metrics.prediction_log_rows_failed.add(max(1, len(item.rows)), {"reason": "rejected"})
                log.error(
                    "prediction log: the database rejected a record; set aside in quarantine",
                    extra={"error": type(error).__name__, "rows": len(item.rows)},
                )
            else:
                metrics.prediction_log_rows_written.add(len(item.rows))
        self._log._committed(batch, decoded)
        return True

    def _carry_forward(self, deferred: Sequence[LoggedFeedback]) -> None:
        """Feedback whose row is not in the database yet is spooled again, for a later batch."""
        for feedback in deferred:
            if time.time() - feedback.first_spooled_at > FEEDBACK_DEFER_SECONDS:
                self._log._metrics.prediction_log_rows_failed.add(1, {"reason": "orphaned_feedback"})
                log.error("feedback for a prediction that never arrived was dropped")
                continue
            appender = self._log._appender
            if appender is None:
                continue
            payload = _encode_feedback(feedback)
            appender.append(payload, _Tag((), 0, len(frame(payload)), feedback)).result(timeout=30)


def insert_ignoring_duplicates(session: Session, rows: Sequence[LoggedPrediction]) -> None:
    """One multi-row INSERT ... ON CONFLICT (id) DO NOTHING, on SQLite and PostgreSQL alike."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    values = [{**asdict(row), "status": PENDING} for row in rows]
    session.execute(insert(Prediction).values(values).on_conflict_do_nothing(index_elements=["id"]))


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
