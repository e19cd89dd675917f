"""`PredictionLog`: what the service calls to log predictions and feedback, and to read them back.

It owns this process's spool directory and appender, the reader over its own and adopted
spools, and the ledger (rows and bytes not yet in the database, where each spooled prediction
is). `writer.LogWriter` drains it; `status()` feeds health and the gauges.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from service.storage.database import Database
from service.storage.prediction_log.records import (
    Decoded,
    LoggedFeedback,
    LoggedPrediction,
    decode,
    encode_feedback,
    encode_predictions,
)
from service.storage.prediction_log.spool import (
    Appended,
    Batch,
    SpoolAppender,
    SpoolDirectory,
    SpoolReader,
    frame,
    read_records,
)
from service.storage.prediction_log.writer import LogWriter
from service.telemetry.providers import Telemetry

log = logging.getLogger(__name__)

LogState = Literal["up", "degraded", "down"]
FULL_SHARE = 0.99  # spooled bytes beyond this share of the bound: the log reports itself down


class PredictionLogFullError(RuntimeError):
    """The spool holds `max_bytes` of rows the database has not taken yet; nothing was recorded."""


class PredictionLogClosedError(RuntimeError):
    """The service is shutting down and takes no more rows."""


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
        self._refusing = False  # a row was refused for space and none was written since
        self._directory: SpoolDirectory | None = None
        self._appender: SpoolAppender | None = None
        self._reader = SpoolReader()
        self._writer: LogWriter | None = None
        self._oldest_at: float | None = None  # `at` of the oldest record not yet written
        self._database_reachable = True
        self._last_error: str | None = None
        self._metrics.observe_prediction_log(lambda: self.status().gauges())

    # --- life cycle ------------------------------------------------------------------------------

    def start(self, *, writer: bool = True) -> None:
        """Open this process's spool, adopt what dead processes left, start draining."""
        self._directory = SpoolDirectory.create(self.root)
        kwargs = {} if self._segment_bytes is None else {"segment_bytes": self._segment_bytes}
        self._appender = SpoolAppender(
            self._directory, on_durable=self._stored, on_readable=self._readable, **kwargs
        )
        self._reader.add_own(self._directory, self._appender)
        self.adopt_orphans()
        if writer:
            self.start_writer()

    def start_writer(self) -> None:
        self._writer = LogWriter(self, database=self._database, telemetry=self._telemetry)
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
        payload = encode_predictions(rows)
        tag = _Tag(ids=tuple(row.id for row in rows), rows=len(rows), size=len(frame(payload)))
        return self._submit(payload, tag)

    def append_feedback(self, feedback: LoggedFeedback, *, timeout: float = 30.0) -> None:
        payload = encode_feedback(feedback)
        tag = _Tag(ids=(), rows=0, size=len(frame(payload)), feedback=feedback)
        self._submit(payload, tag).result(timeout=timeout)

    def _submit(self, payload: bytes, tag: _Tag) -> Future[Appended]:
        appender = self._appender
        with self._lock:
            if self._closing or appender is None:
                raise PredictionLogClosedError("the service is shutting down; nothing was recorded")
            ledger = self._ledger
            if ledger.bytes + ledger.reserved + tag.size > self._max_bytes:
                self._refusing = True
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
        """Flusher thread, after an fsync and before the writer or any waiter sees the records:
        account and index (accounted later, a record the writer had already committed would
        leave its index entry behind for good)."""
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

    def _readable(self) -> None:
        """Flusher thread, once the synced group is visible to the reader: wake the writer."""
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
                            found = _pick(decode(record.payload), prediction_id)
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
            refusing = self._refusing
        queued = self._appender.queued if self._appender is not None else 0
        age = max(0.0, time.time() - oldest) if oldest is not None and rows else 0.0
        state: LogState = "up"
        if refusing or size >= FULL_SHARE * self._max_bytes:
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
                decoded = decode(record.payload)
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

    # --- what the writer calls (see writer.DrainSource) -----------------------------------------

    def read_batch(self) -> Batch:
        """The next records to write, oldest first, without consuming them."""
        return self._reader.read(self._batch_rows)

    def skip_finished(self, batch: Batch) -> None:
        """An empty batch that finished adopted spools: let them go."""
        self._reader.commit(batch)

    def carry_forward(self, feedback: LoggedFeedback) -> None:
        """Spool feedback again whose row is not in the database yet, for a later batch."""
        if self._appender is None:
            return
        payload = encode_feedback(feedback)
        tag = _Tag(ids=(), rows=0, size=len(frame(payload)), feedback=feedback)
        self._appender.append(payload, tag).result(timeout=30)

    def committed(self, batch: Batch, decoded: Sequence[Decoded]) -> None:
        """The batch is in the database: trim the spool, forget the rows, move the oldest age on."""
        self._reader.commit(batch)
        following = self._reader.peek()
        next_oldest = None if following is None else decode(following.payload).at
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
            self._refusing = False
            if next_oldest is None and ledger.rows:
                next_oldest = time.time()  # stored while we looked: at most this old
            self._oldest_at = next_oldest if ledger.rows else None
            self._database_reachable = True
            self._last_error = None
            self._drained.notify_all()

    def write_failed(self, error: str) -> None:
        """The database could not be reached; the rows stay spooled and health says so."""
        with self._lock:
            self._database_reachable = False
            self._last_error = error


def _row_at(path: Path, offset: int, prediction_id: str) -> LoggedPrediction | None:
    try:
        for record in read_records(path, start=offset):
            return _pick(decode(record.payload), prediction_id)
    except FileNotFoundError:  # written to the database and trimmed meanwhile
        return None
    return None


def _pick(decoded: Decoded, prediction_id: str) -> LoggedPrediction | None:
    return next((row for row in decoded.rows if row.id == prediction_id), None)
